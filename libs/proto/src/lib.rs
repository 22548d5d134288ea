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
