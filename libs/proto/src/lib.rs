//! Generated code for every Parley contract in `proto/`. Nothing else lives here.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `parley.messaging.v1`: channels, members, messages.
pub mod messaging {
    pub mod v1 {
        tonic::include_proto!("parley.messaging.v1");
    }
}

/// `parley.events.v1`: the event envelope published by messaging.
pub mod events {
    pub mod v1 {
        tonic::include_proto!("parley.events.v1");
    }
}

/// `parley.presence.v1`: online/offline, last seen, typing.
pub mod presence {
    pub mod v1 {
        tonic::include_proto!("parley.presence.v1");
    }
}

/// `parley.receipts.v1`: delivered/read watermarks, unread.
pub mod receipts {
    pub mod v1 {
        tonic::include_proto!("parley.receipts.v1");
    }
}

/// `parley.notification.v1`: devices, preferences, push fan-out.
pub mod notification {
    pub mod v1 {
        tonic::include_proto!("parley.notification.v1");
    }
}
