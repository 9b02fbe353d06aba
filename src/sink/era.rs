//! Which MCP revisions the reference upstream serves: the current one, the legacy ones, or both.

use rmcp::model::ProtocolVersion;

/// The MCP revisions a sink answers (`edge-relay sink --eras`).
///
/// - `current`: MCP 2026-07-28 (Basic/Lifecycle: `server/discover`, per-request `_meta`, no
///   session); an `initialize` is answered with JSON-RPC error -32022 listing `2026-07-28`.
/// - `legacy`: the `initialize` revisions 2024-11-05 to 2025-11-25 (Basic/Lifecycle,
///   Streamable HTTP sessions); a `server/discover` at 2026-07-28 gets -32022 listing them.
/// - `both` (default): either, chosen per request by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Eras {
    /// Both eras, the client chooses.
    #[default]
    Both,
    /// Only MCP 2026-07-28 and later (no `initialize`, no sessions).
    Current,
    /// Only the `initialize` revisions, up to 2025-11-25.
    Legacy,
}

impl Eras {
    /// The protocol versions served, oldest first (rmcp's `supported_protocol_versions`).
    pub fn versions(self) -> &'static [ProtocolVersion] {
        let legacy = ProtocolVersion::known_up_to(&ProtocolVersion::LATEST_WITH_INITIALIZE);
        match self {
            Self::Both => ProtocolVersion::KNOWN_VERSIONS,
            Self::Current => &ProtocolVersion::KNOWN_VERSIONS[legacy.len()..],
            Self::Legacy => legacy,
        }
    }

    /// True when `initialize` and its Streamable HTTP sessions are served.
    pub fn serves_legacy(self) -> bool {
        self != Self::Current
    }

    /// The flag value naming this mode (`both`, `current`, `legacy`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Current => "current",
            Self::Legacy => "legacy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_split_at_the_initialize_handshake() {
        assert!(Eras::Legacy.versions().iter().all(|v| v.has_initialize()));
        assert!(Eras::Current.versions().iter().all(|v| !v.has_initialize()));
        assert!(
            Eras::Current
                .versions()
                .contains(&ProtocolVersion::V_2026_07_28)
        );
        assert!(
            Eras::Legacy
                .versions()
                .contains(&ProtocolVersion::V_2025_11_25)
        );
        let both = Eras::Legacy.versions().len() + Eras::Current.versions().len();
        assert_eq!(Eras::Both.versions().len(), both);
    }
}
