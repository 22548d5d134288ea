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

    /// owner 3 > admin 2 > member 1.
    pub fn rank(self) -> u8 {
        match self {
            Self::Owner => 3,
            Self::Admin => 2,
            Self::Member => 1,
        }
    }

    /// Whether a member of this role may give `to` to a member who has `from`: only to
    /// someone below them, and only a role below their own (so owners name and demote
    /// admins; admins change no one's role; ownership moves only by a transfer).
    pub fn may_set(self, from: Role, to: Role) -> bool {
        self.rank() > from.rank() && self.rank() > to.rank()
    }

    /// Whether a member of this role may ban or mute `target` (their role, `None` for a
    /// non-member): owners and admins, over someone below their own rank.
    pub fn may_moderate(self, target: Option<Role>) -> bool {
        self.manages() && self.rank() > target.map_or(0, Role::rank)
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

    use proptest::prelude::*;

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Owner), Just(Role::Admin), Just(Role::Member)]
    }

    proptest! {
        /// The rank rules: nobody changes someone at or above their own rank, nobody gives
        /// a role at or above their own, nobody is made owner and the owner is never changed
        /// this way, and a plain member changes no one.
        #[test]
        fn nobody_changes_someone_at_or_above_their_rank(actor in role(), from in role(), to in role()) {
            let allowed = actor.may_set(from, to);
            if allowed {
                prop_assert!(actor.rank() > from.rank() && actor.rank() > to.rank());
                prop_assert!(to != Role::Owner && from != Role::Owner);
                prop_assert!(actor.manages());
            }
            if actor == Role::Member || from.rank() >= actor.rank() || to.rank() >= actor.rank() {
                prop_assert!(!allowed);
            }
        }
    }

    proptest! {
        /// Moderation follows the same ranks: only managers, only over someone below them.
        #[test]
        fn nobody_moderates_someone_at_or_above_their_rank(actor in role(), target in proptest::option::of(role())) {
            let allowed = actor.may_moderate(target);
            prop_assert_eq!(
                allowed,
                actor != Role::Member && target.is_none_or(|t| t.rank() < actor.rank())
            );
            if target == Some(Role::Owner) {
                prop_assert!(!allowed);
            }
        }
    }

    #[test]
    fn who_sets_which_role() {
        assert!(Role::Owner.may_set(Role::Member, Role::Admin));
        assert!(Role::Owner.may_set(Role::Admin, Role::Member));
        assert!(!Role::Admin.may_set(Role::Member, Role::Admin));
        assert!(!Role::Admin.may_set(Role::Admin, Role::Member));
        assert!(Role::Admin.may_set(Role::Member, Role::Member));
        assert!(!Role::Owner.may_set(Role::Owner, Role::Admin));
    }

    #[test]
    fn text_round_trips_and_unknown_is_refused() {
        for r in [Role::Owner, Role::Admin, Role::Member] {
            assert_eq!(Role::try_from(r.as_str()).ok(), Some(r));
        }
        assert!(Role::try_from("root").is_err());
        assert_eq!(pb::Role::from(Role::Admin), pb::Role::Admin);
    }
}
