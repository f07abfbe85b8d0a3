//! Who may subscribe to what. The one place these rules live.

use crate::error::ErrorCode;
use crate::principal::Principal;
use crate::topic::{Topic, TopicKind};

/// A refused subscription, with a stable code and a message safe for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AccessDenied {
    pub code: ErrorCode,
    pub message: String,
}

/// Decides whether `principal` may subscribe to `topic`.
///
/// - `user:{id}`: only the user themself, or a principal with the admin role.
/// - `channel:{id}` and `global`: any authenticated principal.
/// - `presence:{id}`: only through `presence:subscribe`, which the server checks.
/// - `room:`, `group:`, `chat:`: need membership, which lives in the store: the server
///   checks it and subscribes through `SessionGuard::subscribe_member`; here they are refused.
pub fn check_subscribe(principal: &Principal, topic: &Topic) -> Result<(), AccessDenied> {
    match topic.kind() {
        TopicKind::User if topic.id() == principal.user_id.as_str() || principal.is_admin() => Ok(()),
        TopicKind::User => Err(AccessDenied {
            code: ErrorCode::Forbidden,
            message: "subscribing to another user's topic needs the admin role".into(),
        }),
        TopicKind::Channel | TopicKind::Global => Ok(()),
        TopicKind::Room | TopicKind::Group | TopicKind::Chat => {
            Err(AccessDenied { code: ErrorCode::MembershipRequired, message: format!("{topic} requires membership") })
        }
        TopicKind::Presence => Err(AccessDenied {
            code: ErrorCode::Forbidden,
            message: "subscribe to presence with presence:subscribe".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::UserId;

    fn principal(id: &str, roles: &[&str]) -> Principal {
        let mut principal = Principal::new(UserId::parse(id).unwrap());
        principal.roles = roles.iter().map(|r| r.to_string()).collect();
        principal
    }

    fn check(who: &Principal, topic: &str, expect: Result<(), ErrorCode>) {
        let topic = Topic::parse(topic).unwrap();
        assert_eq!(check_subscribe(who, &topic).map_err(|denied| denied.code), expect, "{topic}");
    }

    #[test]
    fn own_user_topic_channels_and_global_are_open() {
        let alice = principal("alice", &[]);
        check(&alice, "user:alice", Ok(()));
        check(&alice, "channel:1", Ok(()));
        check(&alice, "global", Ok(()));
    }

    #[test]
    fn other_users_topic_needs_admin() {
        check(&principal("alice", &[]), "user:bob", Err(ErrorCode::Forbidden));
        check(&principal("alice", &["Admin"]), "user:bob", Err(ErrorCode::Forbidden));
        check(&principal("root", &["admin"]), "user:bob", Ok(()));
    }

    #[test]
    fn membership_topics_are_refused_without_a_store_check() {
        let admin = principal("root", &["admin"]);
        for topic in ["room:1", "group:1", "chat:1"] {
            check(&admin, topic, Err(ErrorCode::MembershipRequired));
        }
    }
}
