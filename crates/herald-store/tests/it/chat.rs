#![allow(clippy::unwrap_used)]

//! Conformance cases for conversations: members, messages, receipts, reactions, blocks.

use herald_store::{ChatError, NewMessage, ReceiptKind, Store};

const ROOM: &str = "room:r1";

fn message(topic: &str, author: &str, content: &str, at: i64) -> NewMessage {
    NewMessage {
        topic: topic.into(),
        author_id: author.into(),
        content: content.into(),
        kind: "text".into(),
        created_at: at,
        ..NewMessage::default()
    }
}

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

async fn room_with(store: &dyn Store, names: &[&str]) {
    store.chat().add_members(ROOM, &users(names), "member", 1).await.expect("members added");
}

pub async fn members_are_added_and_removed_once(store: &dyn Store) {
    let chat = store.chat();
    let added = chat.add_members(ROOM, &users(&["alice", "bob"]), "member", 10).await.unwrap();
    assert_eq!(added, users(&["alice", "bob"]));
    let again = chat.add_members(ROOM, &users(&["bob", "carol", "carol"]), "admin", 20).await.unwrap();
    assert_eq!(again, users(&["carol"]), "only new members are reported");
    let members = chat.members(ROOM).await.unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(members[1].role, "member", "an existing member keeps its role");
    assert_eq!(members[2].role, "admin");
    assert!(chat.is_member(ROOM, "bob").await.unwrap());
    assert!(!chat.is_member(ROOM, "dave").await.unwrap());
    assert!(!chat.is_member("room:other", "bob").await.unwrap());
    chat.add_members("group:g", &users(&["bob"]), "member", 30).await.unwrap();
    assert_eq!(chat.conversations_of("bob").await.unwrap(), users(&["group:g", ROOM]));
    let removed = chat.remove_members(ROOM, &users(&["bob", "dave"])).await.unwrap();
    assert_eq!(removed, users(&["bob"]));
    assert!(!chat.is_member(ROOM, "bob").await.unwrap());
    chat.upsert_conversation(ROOM, Some("General"), 40).await.unwrap();
}

/// A burst of posts (on SQLite written together in one statement): each is answered
/// with its own message or its own refusal, and what is stored is what each was told.
pub async fn messages_posted_at_once_are_each_answered_for_themselves(store: &dyn Store) {
    let chat = store.chat();
    room_with(store, &["alice", "bob"]).await;
    let earlier = chat.post_message(message(ROOM, "alice", "earlier", 1)).await.unwrap().message;
    let mut resent = message(ROOM, "bob", "sent before", 2);
    resent.temp_id = Some("t-old".into());
    let before = chat.post_message(resent.clone()).await.unwrap().message;

    let burst: Vec<NewMessage> = (0..48)
        .map(|i| {
            let mut new = message(ROOM, if i % 2 == 0 { "alice" } else { "bob" }, &format!("m{i}"), 10 + i);
            match i % 8 {
                0 => new.author_id = "mallory".into(),
                1 => new.reply_to = Some(earlier.id),
                2 => new.reply_to = Some(earlier.id + 1_000_000),
                3 => new = resent.clone(),
                4 => new.temp_id = Some("t-burst".into()),
                5 => new.topic = "room:elsewhere".into(),
                _ => {}
            }
            new
        })
        .collect();
    let results = futures_util::future::join_all(burst.iter().map(|new| chat.post_message(new.clone()))).await;

    let mut ids = std::collections::HashSet::new();
    let mut burst_temp = Vec::new();
    for (i, (new, result)) in burst.iter().zip(results).enumerate() {
        match i % 8 {
            0 | 5 => assert!(matches!(result, Err(ChatError::NotMember)), "{i}: {result:?}"),
            2 => assert!(matches!(result, Err(ChatError::NotFound)), "{i}: {result:?}"),
            3 => {
                let posted = result.unwrap();
                assert!(!posted.new, "{i}: a resent temp id is not stored again");
                assert_eq!(posted.message, before);
            }
            4 => burst_temp.push(result.unwrap()),
            _ => {
                let posted = result.unwrap();
                assert!(posted.new, "{i}");
                assert_eq!(posted.message.content, new.content, "{i}: answered with its own message");
                assert_eq!(posted.message.author_id, new.author_id);
                assert_eq!(posted.message.reply_to, new.reply_to);
                assert_eq!(
                    chat.message("alice", posted.message.id).await.unwrap(),
                    posted.message,
                    "{i}: stored as told"
                );
                assert!(ids.insert(posted.message.id), "{i}: ids are not shared");
            }
        }
    }
    // One temp id sent six times at once: stored once, every post told the same message.
    assert_eq!(burst_temp.iter().filter(|posted| posted.new).count(), 1);
    let stored = chat.message("alice", burst_temp[0].message.id).await.unwrap();
    assert!(burst_temp.iter().all(|posted| posted.message == stored));
    assert!(ids.insert(stored.id));
    let history = chat.messages("alice", ROOM, None, 200).await.unwrap();
    assert_eq!(history.len(), ids.len() + 2, "nothing refused was stored");
}

pub async fn only_members_post_and_temp_ids_make_posting_idempotent(store: &dyn Store) {
    let chat = store.chat();
    room_with(store, &["alice"]).await;
    assert!(matches!(chat.post_message(message(ROOM, "mallory", "hi", 5)).await, Err(ChatError::NotMember)));
    let mut first = message(ROOM, "alice", "hello \"world\" ✓", 5);
    first.temp_id = Some("t-1".into());
    first.author_name = Some("Alice".into());
    first.encrypted = true;
    first.metadata = Some(r#"{"mentions":["bob"]}"#.into());
    let posted = chat.post_message(first.clone()).await.unwrap();
    assert!(posted.new);
    let stored = &posted.message;
    assert_eq!(stored.content, "hello \"world\" ✓");
    assert_eq!(stored.author_name.as_deref(), Some("Alice"));
    assert!(stored.encrypted);
    assert_eq!(stored.metadata.as_deref(), Some(r#"{"mentions":["bob"]}"#));
    assert_eq!(stored.temp_id.as_deref(), Some("t-1"));
    let retried = chat.post_message(first).await.unwrap();
    assert!(!retried.new, "the same temp id is not stored twice");
    assert_eq!(retried.message.id, stored.id);
    let other = chat.post_message(message(ROOM, "alice", "second", 6)).await.unwrap();
    assert!(other.message.id > stored.id);
    assert_eq!(chat.message("alice", stored.id).await.unwrap(), *stored);
    assert!(matches!(chat.message("mallory", stored.id).await, Err(ChatError::NotFound)));
}

pub async fn replies_and_forwards_must_be_visible_to_the_author(store: &dyn Store) {
    let chat = store.chat();
    room_with(store, &["alice", "bob"]).await;
    chat.add_members("chat:private", &users(&["carol"]), "member", 1).await.unwrap();
    chat.add_members("chat:shared", &users(&["alice"]), "member", 1).await.unwrap();
    let secret = chat.post_message(message("chat:private", "carol", "secret", 2)).await.unwrap().message;
    let shared = chat.post_message(message("chat:shared", "alice", "shared", 2)).await.unwrap().message;
    let original = chat.post_message(message(ROOM, "bob", "original", 3)).await.unwrap().message;
    let mut reply = message(ROOM, "alice", "reply", 4);
    reply.reply_to = Some(original.id);
    reply.forwarded_from = Some(shared.id);
    let reply = chat.post_message(reply).await.unwrap().message;
    assert_eq!((reply.reply_to, reply.forwarded_from), (Some(original.id), Some(shared.id)));
    let mut across = message(ROOM, "alice", "reply elsewhere", 5);
    across.reply_to = Some(shared.id);
    assert!(matches!(chat.post_message(across).await, Err(ChatError::NotFound)), "a reply stays in its room");
    let mut leak = message(ROOM, "alice", "forward", 5);
    leak.forwarded_from = Some(secret.id);
    assert!(matches!(chat.post_message(leak).await, Err(ChatError::NotFound)), "no forwarding what one cannot see");
    let mut missing = message(ROOM, "alice", "reply", 5);
    missing.reply_to = Some(999_999);
    assert!(matches!(chat.post_message(missing).await, Err(ChatError::NotFound)));
}

pub async fn only_the_author_edits_or_deletes(store: &dyn Store) {
    let chat = store.chat();
    room_with(store, &["alice", "bob"]).await;
    let posted = chat.post_message(message(ROOM, "alice", "draft", 1)).await.unwrap().message;
    assert!(matches!(chat.edit_message("bob", posted.id, "hacked", 2).await, Err(ChatError::NotAuthor)));
    assert!(matches!(chat.edit_message("mallory", posted.id, "x", 2).await, Err(ChatError::NotFound)));
    let edited = chat.edit_message("alice", posted.id, "final", 3).await.unwrap();
    assert_eq!((edited.content.as_str(), edited.edited_at), ("final", Some(3)));
    assert!(matches!(chat.delete_message("bob", posted.id, 4).await, Err(ChatError::NotAuthor)));
    let deleted = chat.delete_message("alice", posted.id, 5).await.unwrap();
    assert_eq!((deleted.content.as_str(), deleted.deleted_at), ("", Some(5)));
    assert!(matches!(chat.edit_message("alice", posted.id, "again", 6).await, Err(ChatError::NotFound)));
    assert!(matches!(chat.delete_message("alice", posted.id, 6).await, Err(ChatError::NotFound)));
}

pub async fn history_pages_newest_first_without_deleted_or_blocked(store: &dyn Store) {
    let chat = store.chat();
    room_with(store, &["alice", "bob", "carol"]).await;
    let mut ids = Vec::new();
    for (i, author) in ["alice", "bob", "carol", "alice", "bob"].iter().enumerate() {
        ids.push(chat.post_message(message(ROOM, author, &format!("m{i}"), i as i64)).await.unwrap().message.id);
    }
    chat.delete_message("carol", ids[2], 10).await.unwrap();
    let page = chat.messages("alice", ROOM, None, 2).await.unwrap();
    assert_eq!(page.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["m4", "m3"]);
    let next = chat.messages("alice", ROOM, Some(page[1].id), 10).await.unwrap();
    assert_eq!(next.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["m1", "m0"], "deleted m2 is left out");
    chat.block("alice", "bob", 11).await.unwrap();
    let unblocked: Vec<String> =
        chat.messages("alice", ROOM, None, 10).await.unwrap().into_iter().map(|m| m.content).collect();
    assert_eq!(unblocked, ["m3", "m0"], "nothing from a blocked user");
    assert_eq!(chat.messages("bob", ROOM, None, 10).await.unwrap().len(), 4, "blocks are one-way");
    assert!(matches!(chat.messages("mallory", ROOM, None, 10).await, Err(ChatError::NotMember)));
}

pub async fn receipts_move_forward_once_and_only_for_members(store: &dyn Store) {
    let chat = store.chat();
    room_with(store, &["alice", "bob"]).await;
    let first = chat.post_message(message(ROOM, "alice", "one", 1)).await.unwrap().message;
    let second = chat.post_message(message(ROOM, "alice", "two", 2)).await.unwrap().message;
    let own = chat.post_message(message(ROOM, "bob", "mine", 3)).await.unwrap().message;
    let changed = chat.mark_receipts("bob", &[first.id, first.id, own.id, 999_999], ReceiptKind::Delivered, 10).await;
    let changed = changed.unwrap();
    assert_eq!(changed.len(), 1, "own, unknown and repeated ids change nothing: {changed:?}");
    assert_eq!(
        (changed[0].message_id, changed[0].author_id.as_str(), changed[0].topic.as_str()),
        (first.id, "alice", ROOM)
    );
    assert!(chat.mark_receipts("bob", &[first.id], ReceiptKind::Delivered, 11).await.unwrap().is_empty());
    let read = chat.mark_receipts("bob", &[first.id, second.id], ReceiptKind::Read, 12).await.unwrap();
    assert_eq!(read.len(), 2);
    assert!(chat.mark_receipts("bob", &[second.id], ReceiptKind::Read, 13).await.unwrap().is_empty());
    assert!(chat.mark_receipts("mallory", &[first.id], ReceiptKind::Read, 13).await.unwrap().is_empty());
    let receipts = chat.receipts("alice", first.id).await.unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        (receipts[0].user_id.as_str(), receipts[0].delivered_at, receipts[0].read_at),
        ("bob", Some(10), Some(12))
    );
    let second_receipt = &chat.receipts("alice", second.id).await.unwrap()[0];
    assert_eq!((second_receipt.delivered_at, second_receipt.read_at), (Some(12), Some(12)), "read implies delivered");
    assert!(matches!(chat.receipts("mallory", first.id).await, Err(ChatError::NotFound)));
}

pub async fn reactions_are_stored_per_member_and_emoji(store: &dyn Store) {
    let chat = store.chat();
    room_with(store, &["alice", "bob"]).await;
    let posted = chat.post_message(message(ROOM, "alice", "react to me", 1)).await.unwrap().message;
    assert_eq!(chat.react("bob", posted.id, "👍", true, 2).await.unwrap(), (ROOM.to_string(), true));
    assert!(!chat.react("bob", posted.id, "👍", true, 3).await.unwrap().1, "once per user and emoji");
    chat.react("alice", posted.id, "👍", true, 4).await.unwrap();
    chat.react("alice", posted.id, "🎉", true, 5).await.unwrap();
    assert!(matches!(chat.react("mallory", posted.id, "👍", true, 6).await, Err(ChatError::NotFound)));
    let reactions = chat.reactions("bob", posted.id).await.unwrap();
    assert_eq!(reactions.len(), 2);
    assert_eq!((reactions[0].emoji.as_str(), reactions[0].user_ids.clone()), ("👍", users(&["bob", "alice"])));
    assert_eq!(reactions[1].user_ids, users(&["alice"]));
    assert!(chat.react("bob", posted.id, "👍", false, 7).await.unwrap().1);
    assert!(!chat.react("bob", posted.id, "👍", false, 8).await.unwrap().1);
    assert_eq!(chat.reactions("alice", posted.id).await.unwrap()[0].user_ids, users(&["alice"]));
}

pub async fn blocks_are_per_user(store: &dyn Store) {
    let chat = store.chat();
    assert!(chat.block("alice", "mallory", 1).await.unwrap());
    assert!(!chat.block("alice", "mallory", 2).await.unwrap());
    chat.block("alice", "eve", 3).await.unwrap();
    assert_eq!(chat.blocked("alice").await.unwrap(), users(&["eve", "mallory"]));
    assert!(chat.blocked("mallory").await.unwrap().is_empty());
    assert!(chat.unblock("alice", "eve").await.unwrap());
    assert!(!chat.unblock("alice", "eve").await.unwrap());
    assert_eq!(chat.blocked("alice").await.unwrap(), users(&["mallory"]));
}

pub async fn presence_is_stored_per_user_and_contacts_share_a_conversation(store: &dyn Store) {
    let chat = store.chat();
    room_with(store, &["alice", "bob"]).await;
    chat.add_members("chat:other", &users(&["carol"]), "member", 1).await.unwrap();
    assert!(chat.share_conversation("alice", "bob").await.unwrap());
    assert!(!chat.share_conversation("alice", "carol").await.unwrap());
    let mut presence = herald_store::StoredPresence {
        user_id: "alice".into(),
        status: "away".into(),
        custom_status: Some("lunch 🍜".into()),
        last_seen: None,
        updated_at: 5,
    };
    chat.save_presence(&presence).await.unwrap();
    presence.status = "busy".into();
    presence.last_seen = Some(9);
    chat.save_presence(&presence).await.unwrap();
    let found = chat.presences(&users(&["nobody", "alice"])).await.unwrap();
    assert_eq!(found, vec![presence.clone()], "the latest, and nothing for users without one");
    chat.save_last_seen(&[("alice".into(), 20), ("dave".into(), 21)]).await.unwrap();
    let found = chat.presences(&users(&["alice", "dave"])).await.unwrap();
    assert_eq!(
        (found[0].status.as_str(), found[0].last_seen, found[0].custom_status.as_deref()),
        ("busy", Some(20), Some("lunch 🍜"))
    );
    assert_eq!((found[1].status.as_str(), found[1].last_seen), ("online", Some(21)), "a first record for dave");
}

pub async fn calls_follow_their_state_machine_between_their_two_parties(store: &dyn Store) {
    use herald_store::CallStep;
    let chat = store.chat();
    let call = chat.create_call("alice", "bob", "video", 10).await.unwrap();
    assert_eq!((call.state.as_str(), call.kind.as_str(), call.reason.clone()), ("ringing", "video", None));
    assert!(
        matches!(chat.step_call("alice", call.id, CallStep::Answer, 11).await, Err(ChatError::NotFound)),
        "only the callee answers"
    );
    assert!(matches!(chat.step_call("mallory", call.id, CallStep::End, 11).await, Err(ChatError::NotFound)));
    assert!(matches!(chat.call("mallory", call.id).await, Err(ChatError::NotFound)));
    let active = chat.step_call("bob", call.id, CallStep::Answer, 12).await.unwrap();
    assert_eq!((active.state.as_str(), active.answered_at), ("active", Some(12)));
    assert!(
        matches!(chat.step_call("bob", call.id, CallStep::Answer, 13).await, Err(ChatError::Conflict)),
        "answered once"
    );
    assert!(
        matches!(chat.step_call("bob", call.id, CallStep::Miss, 13).await, Err(ChatError::Conflict)),
        "an active call is not missed"
    );
    let ended = chat.step_call("alice", call.id, CallStep::End, 20).await.unwrap();
    assert_eq!((ended.state.as_str(), ended.reason.as_deref(), ended.ended_at), ("ended", Some("completed"), Some(20)));
    assert!(matches!(chat.step_call("bob", call.id, CallStep::End, 21).await, Err(ChatError::Conflict)));

    let unanswered = chat.create_call("alice", "bob", "audio", 30).await.unwrap();
    let missed = chat.step_call("", unanswered.id, CallStep::Miss, 60).await.unwrap();
    assert_eq!((missed.state.as_str(), missed.reason.as_deref()), ("missed", Some("missed")));
    let rejected = chat.create_call("bob", "alice", "audio", 70).await.unwrap();
    let rejected = chat.step_call("alice", rejected.id, CallStep::Reject, 71).await.unwrap();
    assert_eq!(rejected.reason.as_deref(), Some("rejected"));
    let cancelled = chat.create_call("alice", "carol", "audio", 80).await.unwrap();
    assert_eq!(
        chat.step_call("alice", cancelled.id, CallStep::End, 81).await.unwrap().reason.as_deref(),
        Some("cancelled")
    );
    let history: Vec<i64> = chat.calls_of("bob", 10).await.unwrap().iter().map(|call| call.id).collect();
    assert_eq!(history, vec![rejected.id, unanswered.id, call.id], "newest first, only bob's");
}
