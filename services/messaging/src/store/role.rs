//! A member's role in a channel: text in the database ('owner', 'admin', 'member'), an
//! enum everywhere else.

use parley_proto::messaging::v1 as pb;
use sqlx::{
    Postgres,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef},
};

/// A member's role in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Admin,
    Member,
}

/// A role text the database should never hold (its CHECK constraint allows three).
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}")]
pub struct UnknownRole(String);

impl Role {
    /// The role's text in `members.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    /// Owners and admins manage a channel: they add and remove others and delete others'
    /// messages.
    pub fn manages(self) -> bool {
        self != Self::Member
    }

    /// Whether others may remove a member of this role: anyone but the owner.
    pub fn removable_by_others(self) -> bool {
        self != Self::Owner
    }
}

impl TryFrom<&str> for Role {
    type Error = UnknownRole;

    fn try_from(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "owner" => Ok(Self::Owner),
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Owner => pb::Role::Owner,
            Role::Admin => pb::Role::Admin,
            Role::Member => pb::Role::Member,
        }
    }
}

// Bound and read as plain `text`, exactly like the strings it replaces.
impl sqlx::Type<Postgres> for Role {
    fn type_info() -> PgTypeInfo {
        <&str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, Postgres> for Role {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as sqlx::Encode<Postgres>>::encode(self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Role {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <&str as sqlx::Decode<Postgres>>::decode(value)?;
        Ok(Self::try_from(s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_unknown_is_refused() {
        for r in [Role::Owner, Role::Admin, Role::Member] {
            assert_eq!(Role::try_from(r.as_str()).ok(), Some(r));
        }
        assert!(Role::try_from("root").is_err());
        assert_eq!(pb::Role::from(Role::Admin), pb::Role::Admin);
    }
}
