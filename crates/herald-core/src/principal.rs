//! Who is on the other end of a session, as established once by authentication.

use std::fmt;
use std::sync::Arc;

use crate::topic::{IdError, validate_id};

/// A validated user id (same alphabet as topic identifiers).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        validate_id(text)?;
        Ok(Self(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

/// The role that may subscribe to other users' topics (seed 000's `subscribe_user`).
pub const ADMIN_ROLE: &str = "admin";

/// An authenticated identity. Built by the auth crate from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    /// Role claims, e.g. `admin`; compared case-sensitively.
    pub roles: Vec<String>,
    /// The device the token was issued for, when the token says so.
    pub device: Option<String>,
    /// Display name claim, when present; used by presence and chat events.
    pub name: Option<String>,
    /// Avatar URL claim (`image` or `picture`), when present; seed 001's chat events carry it.
    pub image: Option<String>,
    /// Token expiry as seconds since the Unix epoch; the session is closed then.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// A principal with no roles, device or expiry; convenient in tests and tools.
    pub fn new(user_id: UserId) -> Self {
        Self { user_id, roles: Vec::new(), device: None, name: None, image: None, expires_at: None }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(ADMIN_ROLE)
    }
}
