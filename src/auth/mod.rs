//! Who is calling, and what may they do. Every archive operation takes a [`Principal`]: the
//! local caller of an archive without authentication, the holder of an API key (`keys`), or
//! the owner of a verified client certificate (`certs`). Failed attempts are rate-limited per
//! client address (`limiter`). The roles each endpoint needs are declared once, on the
//! router's `Endpoint`.

pub mod certs;
pub mod jwt;
pub mod keys;
pub mod limiter;

use std::fmt;

/// What a principal may do. PS3.18 §8.11 leaves security to the implementation; these are the
/// three roles of Kura's security model (ARCHITECTURE.md, "Security").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Stores instances (STOW-RS).
    Uploader,
    /// Searches and retrieves (QIDO-RS, WADO-RS, rendered, thumbnails, WADO-URI).
    Reader,
    /// Deletes, and manages API keys.
    Administrator,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Uploader, Role::Reader, Role::Administrator];

    pub fn name(self) -> &'static str {
        match self {
            Role::Uploader => "uploader",
            Role::Reader => "reader",
            Role::Administrator => "administrator",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Role::Uploader => 1,
            Role::Reader => 2,
            Role::Administrator => 4,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| format!("unknown role {text:?}: expected uploader, reader or administrator"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub fn all() -> Roles {
        Role::ALL.into_iter().collect()
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |role| self.contains(*role))
    }

    /// Comma-separated role names, e.g. `uploader,reader`.
    pub fn parse_list(text: &str) -> Result<Roles, String> {
        let roles: Roles = text
            .split(',')
            .filter(|r| !r.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Role>, _>>()?
            .into_iter()
            .collect();
        if roles == Roles::default() {
            return Err("no role given".into());
        }
        Ok(roles)
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(roles: I) -> Roles {
        Roles(roles.into_iter().fold(0, |bits, role| bits | role.bit()))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::name).collect();
        f.write_str(&names.join(","))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who, for logs and the audit trail (never a patient attribute, never a secret): `local`,
    /// `key:{id}` or `cert:{name}`.
    pub subject: String,
    /// The institution the caller acts for; it owns what it stores.
    pub institution: String,
    /// What the caller may do.
    pub roles: Roles,
    /// The API key that authenticated the caller, if one did.
    pub key_id: Option<String>,
    /// How far what the caller sees reaches (see [`Scope`]).
    pub scope: Scope,
}

/// How far a principal sees. Not derived from names (a subject or institution could be chosen
/// by whoever issues credentials), only set by the code that authenticated the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Its institution's studies plus those shared with the institution or the subject: every
    /// authenticated caller.
    #[default]
    Institution,
    /// Every study: the local caller of an archive without authentication (whoever can reach
    /// it can read the data directory as well), and nobody else.
    Deployment,
    /// Only what the share link with this id grants, read-only (`/share/{token}/dicomweb`).
    Link(String),
}

impl Principal {
    /// The caller of an archive with no authentication required (loopback by default): every
    /// role, institution `local`.
    pub fn local() -> Principal {
        Principal {
            subject: "local".into(),
            institution: "local".into(),
            roles: Roles::all(),
            key_id: None,
            scope: Scope::Deployment,
        }
    }

    /// The caller of a share link: a reader of what that share grants, nothing else. It acts
    /// for the institution that shared (`owner`), so that its accesses are on that
    /// institution's part of the audit trail; what it sees comes from its scope alone.
    pub fn link(share_id: &str, owner: &str) -> Principal {
        Principal {
            subject: format!("link:{share_id}"),
            institution: owner.to_string(),
            roles: [Role::Reader].into_iter().collect(),
            key_id: None,
            scope: Scope::Link(share_id.to_string()),
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_lists_parse_and_print() {
        let roles = Roles::parse_list("reader, Uploader").unwrap();
        assert!(roles.contains(Role::Reader) && roles.contains(Role::Uploader));
        assert!(!roles.contains(Role::Administrator));
        assert_eq!(roles.to_string(), "uploader,reader");
        assert!(Roles::parse_list("reader,root").is_err());
        assert!(Roles::parse_list("").is_err());
        assert!(Principal::local().has(Role::Administrator));
    }
}
