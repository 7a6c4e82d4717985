//! Identifier newtypes.
//!
//! Ids are UUIDs, but each kind of id is its own type so a node id can never be passed where a
//! task id is expected. This module never generates ids: callers at the edges (API handlers,
//! agents) create them with `Uuid::now_v7()` and pass them in, so the core stays free of clocks
//! and randomness.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::CoreError;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// The last 12 hex digits: the random part of a v7 UUID, short enough for
            /// container names and tables yet unlikely to collide.
            pub fn short(&self) -> String {
                let simple = self.0.simple().to_string();
                simple[simple.len() - 12..].to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = CoreError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| CoreError::InvalidId { kind: $what, input: s.to_owned() })
            }
        }
    };
}

uuid_id!(
    /// Identifies one task for its whole life, across restarts and reschedules.
    TaskId,
    "task"
);
uuid_id!(
    /// Identifies one worker node; stable across restarts of the worker process.
    NodeId,
    "node"
);

uuid_id!(
    /// Identifies one rollout of one version of a service.
    DeploymentId,
    "deployment"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings_and_json() {
        let id = TaskId::from_uuid(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001));
        let text = id.to_string();
        assert_eq!(text, "01900000-0000-7000-8000-000000000001");
        assert_eq!(text.parse::<TaskId>().unwrap(), id);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        assert_eq!(id.short(), "000000000001");
    }

    #[test]
    fn bad_ids_say_what_they_are() {
        let err = "nope".parse::<NodeId>().unwrap_err();
        assert_eq!(err.to_string(), "invalid node id \"nope\": expected a UUID");
    }
}
