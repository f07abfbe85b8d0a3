//! Conversations (rooms, groups, chats): members, messages, receipts, reactions, blocks.
//!
//! One SQL text serves both backends: statements number their parameters `$1`, `$2`, …,
//! which PostgreSQL reads natively and sqlx's SQLite driver maps to the same arguments,
//! and they use only what both dialects share (`ON CONFLICT … DO`, `RETURNING`, `CAST`).
//! [`chat_store!`] expands the implementation for each backend's pool.
//!
//! Invariants:
//! - Only a member of a conversation posts to it, reacts in it, gives receipts for its
//!   messages or reads its history; for anyone else the conversation behaves as if it
//!   did not exist ([`ChatError::NotMember`] / [`ChatError::NotFound`]), checked in the
//!   same statement as the change.
//! - Only the author edits or deletes a message ([`ChatError::NotAuthor`]).
//! - A message sent twice with the same `temp_id` by the same author is stored once.

use crate::{BoxFuture, StoreError};

/// What a conversation operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The user is not a member of the conversation.
    #[error("not a member of this conversation")]
    NotMember,
    /// The message (or the one replied to or forwarded) does not exist for this user.
    #[error("message not found")]
    NotFound,
    /// Only the author may change a message.
    #[error("only the author may change this message")]
    NotAuthor,
    /// The call's state does not allow this step.
    #[error("the call's state does not allow this")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ChatError {
    fn from(error: sqlx::Error) -> Self {
        ChatError::Store(StoreError::from(error))
    }
}

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    /// `owner`, `admin` or `member`; Herald stores it and leaves its meaning to clients.
    pub role: String,
    pub joined_at: i64,
}

/// A message to store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewMessage {
    pub topic: String,
    pub author_id: String,
    pub author_name: Option<String>,
    pub author_image: Option<String>,
    pub content: String,
    /// `text` unless the client says otherwise (`image`, `file`, …).
    pub kind: String,
    /// The content is ciphertext the server cannot read; stored and relayed as is.
    pub encrypted: bool,
    pub reply_to: Option<i64>,
    pub forwarded_from: Option<i64>,
    pub temp_id: Option<String>,
    /// Client JSON, as text.
    pub metadata: Option<String>,
    pub created_at: i64,
}

impl NewMessage {
    /// The message as stored under `id`, never edited or deleted.
    pub(crate) fn stored_as(self, id: i64) -> Message {
        Message {
            id,
            topic: self.topic,
            author_id: self.author_id,
            author_name: self.author_name,
            author_image: self.author_image,
            content: self.content,
            kind: self.kind,
            encrypted: self.encrypted,
            reply_to: self.reply_to,
            forwarded_from: self.forwarded_from,
            temp_id: self.temp_id,
            metadata: self.metadata,
            created_at: self.created_at,
            edited_at: None,
            deleted_at: None,
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: i64,
    pub topic: String,
    pub author_id: String,
    pub author_name: Option<String>,
    pub author_image: Option<String>,
    pub content: String,
    pub kind: String,
    pub encrypted: bool,
    pub reply_to: Option<i64>,
    pub forwarded_from: Option<i64>,
    pub temp_id: Option<String>,
    pub metadata: Option<String>,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub deleted_at: Option<i64>,
}

/// The result of posting a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    pub message: Message,
    /// False when the author had already sent this `temp_id` (that message is returned).
    pub new: bool,
}

/// Which receipt a member gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    Delivered,
    /// Read (which implies delivered).
    Read,
}

/// A receipt that changed state, with what its author's devices need to be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptChange {
    pub message_id: i64,
    pub topic: String,
    pub author_id: String,
}

/// One member's receipt of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub user_id: String,
    pub delivered_at: Option<i64>,
    pub read_at: Option<i64>,
}

/// The users who reacted to a message with one emoji.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub emoji: String,
    pub user_ids: Vec<String>,
}

/// A user's presence as stored: what they chose and when they were last seen online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPresence {
    pub user_id: String,
    /// `online`, `away` or `busy`; validated by the caller.
    pub status: String,
    pub custom_status: Option<String>,
    pub last_seen: Option<i64>,
    pub updated_at: i64,
}

/// A call between two users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub id: i64,
    pub caller_id: String,
    pub callee_id: String,
    /// `audio` or `video`.
    pub kind: String,
    /// `ringing`, `active`, `ended` or `missed`.
    pub state: String,
    /// Why it ended: `completed`, `rejected`, `cancelled`, `missed`.
    pub reason: Option<String>,
    pub created_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
}

/// A step of a call's state machine, and who may take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStep {
    /// The callee answers a ringing call: it becomes active.
    Answer,
    /// The callee rejects a ringing call: it ends (`rejected`).
    Reject,
    /// Either party ends a ringing (`cancelled`) or active (`completed`) call.
    End,
    /// Nobody answered in time: a ringing call is `missed`.
    Miss,
}

/// The largest page of messages one query returns.
pub const MAX_MESSAGE_PAGE: u32 = 200;

/// Conversations and what happens in them. Both store backends implement it.
pub trait ChatStore: Send + Sync + 'static {
    /// Creates the conversation if it does not exist; renames it when `name` is given.
    fn upsert_conversation<'a>(
        &'a self,
        topic: &'a str,
        name: Option<&'a str>,
        at: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Adds members (creating the conversation if needed); returns those who were not
    /// members before, in the order given.
    fn add_members<'a>(
        &'a self,
        topic: &'a str,
        users: &'a [String],
        role: &'a str,
        at: i64,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Removes members; returns those who were members, in the order given.
    fn remove_members<'a>(
        &'a self,
        topic: &'a str,
        users: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Members, in the order they joined.
    fn members<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<Vec<Member>, StoreError>>;

    fn is_member<'a>(&'a self, topic: &'a str, user: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The topics of every conversation `user` is a member of, sorted.
    fn conversations_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Stores a message from a member; a reply or a forward must name a message the
    /// author can see (the reply one in the same conversation).
    fn post_message(&self, message: NewMessage) -> BoxFuture<'_, Result<Posted, ChatError>>;

    /// A message as `viewer` (a member of its conversation) sees it; deleted ones too.
    fn message<'a>(&'a self, viewer: &'a str, id: i64) -> BoxFuture<'a, Result<Message, ChatError>>;

    /// Replaces a message's content; only by its author, not once deleted.
    fn edit_message<'a>(
        &'a self,
        author: &'a str,
        id: i64,
        content: &'a str,
        at: i64,
    ) -> BoxFuture<'a, Result<Message, ChatError>>;

    /// Deletes a message (its content is erased, the row stays as a tombstone); only by
    /// its author.
    fn delete_message<'a>(&'a self, author: &'a str, id: i64, at: i64) -> BoxFuture<'a, Result<Message, ChatError>>;

    /// A page of a conversation's messages for `viewer`, newest first, older than
    /// `before`: not deleted, and none from users `viewer` blocked.
    fn messages<'a>(
        &'a self,
        viewer: &'a str,
        topic: &'a str,
        before: Option<i64>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Message>, ChatError>>;

    /// Records receipts by `user` for the messages named (others' messages in
    /// conversations `user` is a member of; the rest are ignored). Returns those whose
    /// state changed.
    fn mark_receipts<'a>(
        &'a self,
        user: &'a str,
        ids: &'a [i64],
        kind: ReceiptKind,
        at: i64,
    ) -> BoxFuture<'a, Result<Vec<ReceiptChange>, StoreError>>;

    /// Every member's receipt of a message, for a viewer who is a member.
    fn receipts<'a>(&'a self, viewer: &'a str, id: i64) -> BoxFuture<'a, Result<Vec<Receipt>, ChatError>>;

    /// Adds (`add`) or removes a member's reaction; returns the message's topic and
    /// whether anything changed.
    fn react<'a>(
        &'a self,
        user: &'a str,
        id: i64,
        emoji: &'a str,
        add: bool,
        at: i64,
    ) -> BoxFuture<'a, Result<(String, bool), ChatError>>;

    /// A message's reactions, by emoji (in order of first use).
    fn reactions<'a>(&'a self, viewer: &'a str, id: i64) -> BoxFuture<'a, Result<Vec<Reaction>, ChatError>>;

    /// `user` blocks `other`; returns whether this is new.
    fn block<'a>(&'a self, user: &'a str, other: &'a str, at: i64) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Returns whether there was a block.
    fn unblock<'a>(&'a self, user: &'a str, other: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The users `user` has blocked, sorted.
    fn blocked<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Starts a call (ringing).
    fn create_call<'a>(
        &'a self,
        caller: &'a str,
        callee: &'a str,
        kind: &'a str,
        at: i64,
    ) -> BoxFuture<'a, Result<Call, StoreError>>;

    /// Takes `step` on call `id` for `user` (a party; for answer and reject, the callee;
    /// for a miss, anyone). `NotFound` when the call is not theirs, `Conflict` when its
    /// state does not allow the step.
    fn step_call<'a>(
        &'a self,
        user: &'a str,
        id: i64,
        step: CallStep,
        at: i64,
    ) -> BoxFuture<'a, Result<Call, ChatError>>;

    /// A call, for one of its parties.
    fn call<'a>(&'a self, user: &'a str, id: i64) -> BoxFuture<'a, Result<Call, ChatError>>;

    /// A user's calls, newest first.
    fn calls_of<'a>(&'a self, user: &'a str, limit: u32) -> BoxFuture<'a, Result<Vec<Call>, StoreError>>;

    /// Whether two users are members of at least one conversation together.
    fn share_conversation<'a>(&'a self, a: &'a str, b: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Stores a user's presence, replacing what was there.
    fn save_presence<'a>(&'a self, presence: &'a StoredPresence) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records when each user was last seen, in one transaction (a user without a stored
    /// presence gets one, `online` by choice).
    fn save_last_seen<'a>(&'a self, seen: &'a [(String, i64)]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The stored presence of each user named who has one, in the order named.
    fn presences<'a>(&'a self, users: &'a [String]) -> BoxFuture<'a, Result<Vec<StoredPresence>, StoreError>>;
}

/// The columns every query that returns messages selects, in [`decode_message`]'s order.
macro_rules! message_columns {
    () => {
        "id, topic, author_id, author_name, author_image, content, type, encrypted, reply_to, forwarded_from, temp_id, metadata, created_at, edited_at, deleted_at"
    };
}
pub(crate) use message_columns;

/// Reads one row selected with [`message_columns!`], from either backend.
pub(crate) fn decode_message<R>(row: &R) -> Result<Message, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(Message {
        id: row.try_get(0)?,
        topic: row.try_get(1)?,
        author_id: row.try_get(2)?,
        author_name: row.try_get(3)?,
        author_image: row.try_get(4)?,
        content: row.try_get(5)?,
        kind: row.try_get(6)?,
        encrypted: row.try_get::<i64, _>(7)? != 0,
        reply_to: row.try_get(8)?,
        forwarded_from: row.try_get(9)?,
        temp_id: row.try_get(10)?,
        metadata: row.try_get(11)?,
        created_at: row.try_get(12)?,
        edited_at: row.try_get(13)?,
        deleted_at: row.try_get(14)?,
    })
}

/// The columns every query that returns calls selects, in [`decode_call`]'s order.
macro_rules! call_columns {
    () => {
        "id, caller_id, callee_id, type, state, reason, created_at, answered_at, ended_at"
    };
}
pub(crate) use call_columns;

/// Reads one row selected with [`call_columns!`], from either backend.
pub(crate) fn decode_call<R>(row: &R) -> Result<Call, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(Call {
        id: row.try_get(0)?,
        caller_id: row.try_get(1)?,
        callee_id: row.try_get(2)?,
        kind: row.try_get(3)?,
        state: row.try_get(4)?,
        reason: row.try_get(5)?,
        created_at: row.try_get(6)?,
        answered_at: row.try_get(7)?,
        ended_at: row.try_get(8)?,
    })
}

/// What a call step needs: the states it starts from, the state and reason it leads to,
/// and whether only the callee may take it.
pub(crate) fn step_rule(step: CallStep) -> (&'static str, &'static str, &'static str, Option<&'static str>, bool) {
    match step {
        CallStep::Answer => ("ringing", "ringing", "active", None, true),
        CallStep::Reject => ("ringing", "ringing", "ended", Some("rejected"), true),
        CallStep::End => ("ringing", "active", "ended", None, false),
        CallStep::Miss => ("ringing", "ringing", "missed", Some("missed"), false),
    }
}

/// `FROM` and `WHERE` of a query for message `$1`, not deleted, in a conversation user
/// `$2` is a member of (aliased `m`).
macro_rules! live_message_of_member {
    () => {
        concat!(
            " FROM herald_messages m WHERE m.id = $1 AND m.deleted_at IS NULL AND EXISTS ",
            "(SELECT 1 FROM herald_members b WHERE b.topic = m.topic AND b.user_id = $2)"
        )
    };
}
pub(crate) use live_message_of_member;

/// Why a change to message `id` by `user` matched no row: it is not there for them, or
/// it is someone else's.
macro_rules! why_unchanged {
    ($pool:expr, $user:expr, $id:expr) => {{
        let author: Option<String> =
            sqlx::query_scalar(concat!("SELECT m.author_id", $crate::chat::live_message_of_member!()))
                .bind($id)
                .bind($user)
                .fetch_optional($pool)
                .await?;
        match author {
            Some(_) => ChatError::NotAuthor,
            None => ChatError::NotFound,
        }
    }};
}
pub(crate) use why_unchanged;

/// `ChatStore` for a store type with a `pool` field, in the SQL both backends share.
macro_rules! chat_store {
    ($store:ty) => {
        impl $store {
            /// Stores one message in one statement: the membership and reference checks
            /// and the insert.
            async fn post_single(
                &self,
                new: $crate::chat::NewMessage,
            ) -> Result<$crate::chat::Posted, $crate::chat::ChatError> {
                use $crate::chat::{Posted, decode_message, message_columns};
                let mut turn = self.write_turn().await?;
                let row = sqlx::query(concat!(
                    "INSERT INTO herald_messages (topic, author_id, author_name, author_image, content, type, ",
                    "encrypted, reply_to, forwarded_from, temp_id, metadata, created_at) ",
                    "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 ",
                    "WHERE EXISTS (SELECT 1 FROM herald_members WHERE topic = $1 AND user_id = $2) ",
                    "AND (CAST($8 AS BIGINT) IS NULL OR EXISTS (SELECT 1 FROM herald_messages r ",
                    "WHERE r.id = $8 AND r.topic = $1 AND r.deleted_at IS NULL)) ",
                    "AND (CAST($9 AS BIGINT) IS NULL OR EXISTS (SELECT 1 FROM herald_messages f ",
                    "JOIN herald_members fm ON fm.topic = f.topic AND fm.user_id = $2 ",
                    "WHERE f.id = $9 AND f.deleted_at IS NULL)) ",
                    "ON CONFLICT (author_id, temp_id) WHERE temp_id IS NOT NULL DO NOTHING RETURNING ",
                    message_columns!()
                ))
                .bind(&new.topic)
                .bind(&new.author_id)
                .bind(&new.author_name)
                .bind(&new.author_image)
                .bind(&new.content)
                .bind(&new.kind)
                .bind(i64::from(new.encrypted))
                .bind(new.reply_to)
                .bind(new.forwarded_from)
                .bind(&new.temp_id)
                .bind(&new.metadata)
                .bind(new.created_at)
                .fetch_optional(&mut *turn)
                .await?;
                // Nothing written: why is read on a reader, leaving the writer to others.
                drop(turn);
                match row {
                    Some(row) => Ok(Posted { message: decode_message(&row)?, new: true }),
                    None => self.why_not_posted(&new).await,
                }
            }

            /// What posting `new` answers when the insert wrote nothing: the message the
            /// author already sent with this `temp_id`, or why it was refused. Reads on
            /// the readers, so it must not be called during a write turn.
            async fn why_not_posted(
                &self,
                new: &$crate::chat::NewMessage,
            ) -> Result<$crate::chat::Posted, $crate::chat::ChatError> {
                use $crate::chat::{ChatError, ChatStore, Posted, decode_message, message_columns};
                if let Some(temp_id) = &new.temp_id {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM herald_messages WHERE author_id = $1 AND temp_id = $2"
                    ))
                    .bind(&new.author_id)
                    .bind(temp_id)
                    .fetch_optional(&self.pool)
                    .await?;
                    if let Some(row) = row {
                        return Ok(Posted { message: decode_message(&row)?, new: false });
                    }
                }
                if !self.is_member(&new.topic, &new.author_id).await? {
                    return Err(ChatError::NotMember);
                }
                Err(ChatError::NotFound)
            }
        }

        impl $crate::chat::ChatStore for $store {
            fn upsert_conversation<'a>(
                &'a self,
                topic: &'a str,
                name: Option<&'a str>,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<(), $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    sqlx::query(concat!(
                        "INSERT INTO herald_conversations (topic, name, created_at, updated_at) VALUES ($1, $2, $3, $3) ",
                        "ON CONFLICT (topic) DO UPDATE SET name = COALESCE(excluded.name, herald_conversations.name), ",
                        "updated_at = excluded.updated_at"
                    ))
                    .bind(topic)
                    .bind(name)
                    .bind(at)
                    .execute(&mut *turn)
                    .await?;
                    Ok(())
                })
            }

            fn add_members<'a>(
                &'a self,
                topic: &'a str,
                users: &'a [String],
                role: &'a str,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<Vec<String>, $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let mut tx = sqlx::Connection::begin(&mut *turn).await?;
                    sqlx::query(concat!(
                        "INSERT INTO herald_conversations (topic, name, created_at, updated_at) VALUES ($1, NULL, $2, $2) ",
                        "ON CONFLICT (topic) DO NOTHING"
                    ))
                    .bind(topic)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                    let mut added = Vec::new();
                    for user in users {
                        let inserted = sqlx::query(concat!(
                            "INSERT INTO herald_members (topic, user_id, role, joined_at) VALUES ($1, $2, $3, $4) ",
                            "ON CONFLICT (topic, user_id) DO NOTHING"
                        ))
                        .bind(topic)
                        .bind(user)
                        .bind(role)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        if inserted > 0 && !added.contains(user) {
                            added.push(user.clone());
                        }
                    }
                    tx.commit().await?;
                    Ok(added)
                })
            }

            fn remove_members<'a>(
                &'a self,
                topic: &'a str,
                users: &'a [String],
            ) -> $crate::BoxFuture<'a, Result<Vec<String>, $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let mut tx = sqlx::Connection::begin(&mut *turn).await?;
                    let mut removed = Vec::new();
                    for user in users {
                        let deleted = sqlx::query("DELETE FROM herald_members WHERE topic = $1 AND user_id = $2")
                            .bind(topic)
                            .bind(user)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        if deleted > 0 {
                            removed.push(user.clone());
                        }
                    }
                    tx.commit().await?;
                    Ok(removed)
                })
            }

            fn members<'a>(
                &'a self,
                topic: &'a str,
            ) -> $crate::BoxFuture<'a, Result<Vec<$crate::chat::Member>, $crate::StoreError>> {
                Box::pin(async move {
                    let rows: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT user_id, role, joined_at FROM herald_members WHERE topic = $1 ORDER BY joined_at, user_id",
                    )
                    .bind(topic)
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(user_id, role, joined_at)| $crate::chat::Member { user_id, role, joined_at })
                        .collect())
                })
            }

            fn is_member<'a>(
                &'a self,
                topic: &'a str,
                user: &'a str,
            ) -> $crate::BoxFuture<'a, Result<bool, $crate::StoreError>> {
                Box::pin(async move {
                    let found: Option<i64> =
                        sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM herald_members WHERE topic = $1 AND user_id = $2")
                            .bind(topic)
                            .bind(user)
                            .fetch_optional(&self.pool)
                            .await?;
                    Ok(found.is_some())
                })
            }

            fn conversations_of<'a>(
                &'a self,
                user: &'a str,
            ) -> $crate::BoxFuture<'a, Result<Vec<String>, $crate::StoreError>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT topic FROM herald_members WHERE user_id = $1 ORDER BY topic")
                        .bind(user)
                        .fetch_all(&self.pool)
                        .await?)
                })
            }

            fn post_message(
                &self,
                new: $crate::chat::NewMessage,
            ) -> $crate::BoxFuture<'_, Result<$crate::chat::Posted, $crate::chat::ChatError>> {
                // Each backend decides how a message reaches `post_single` (SQLite: in a
                // batch with others posted at the same moment).
                Box::pin(self.post(new))
            }

            fn message<'a>(
                &'a self,
                viewer: &'a str,
                id: i64,
            ) -> $crate::BoxFuture<'a, Result<$crate::chat::Message, $crate::chat::ChatError>> {
                use $crate::chat::{ChatError, decode_message, message_columns};
                Box::pin(async move {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM herald_messages m WHERE m.id = $1 AND EXISTS ",
                        "(SELECT 1 FROM herald_members b WHERE b.topic = m.topic AND b.user_id = $2)"
                    ))
                    .bind(id)
                    .bind(viewer)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(ChatError::NotFound)?;
                    Ok(decode_message(&row)?)
                })
            }

            fn edit_message<'a>(
                &'a self,
                author: &'a str,
                id: i64,
                content: &'a str,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<$crate::chat::Message, $crate::chat::ChatError>> {
                use $crate::chat::{ChatError, decode_message, message_columns, why_unchanged};
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let row = sqlx::query(concat!(
                        "UPDATE herald_messages SET content = $1, edited_at = $2 ",
                        "WHERE id = $3 AND author_id = $4 AND deleted_at IS NULL RETURNING ",
                        message_columns!()
                    ))
                    .bind(content)
                    .bind(at)
                    .bind(id)
                    .bind(author)
                    .fetch_optional(&mut *turn)
                    .await?;
                    match row {
                        Some(row) => Ok(decode_message(&row)?),
                        None => Err(why_unchanged!(&mut *turn, author, id)),
                    }
                })
            }

            fn delete_message<'a>(
                &'a self,
                author: &'a str,
                id: i64,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<$crate::chat::Message, $crate::chat::ChatError>> {
                use $crate::chat::{ChatError, decode_message, message_columns, why_unchanged};
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let row = sqlx::query(concat!(
                        "UPDATE herald_messages SET content = '', metadata = NULL, deleted_at = $1 ",
                        "WHERE id = $2 AND author_id = $3 AND deleted_at IS NULL RETURNING ",
                        message_columns!()
                    ))
                    .bind(at)
                    .bind(id)
                    .bind(author)
                    .fetch_optional(&mut *turn)
                    .await?;
                    match row {
                        Some(row) => Ok(decode_message(&row)?),
                        None => Err(why_unchanged!(&mut *turn, author, id)),
                    }
                })
            }

            fn messages<'a>(
                &'a self,
                viewer: &'a str,
                topic: &'a str,
                before: Option<i64>,
                limit: u32,
            ) -> $crate::BoxFuture<'a, Result<Vec<$crate::chat::Message>, $crate::chat::ChatError>> {
                use $crate::chat::{ChatError, MAX_MESSAGE_PAGE, decode_message, message_columns};
                Box::pin(async move {
                    if !self.is_member(topic, viewer).await? {
                        return Err(ChatError::NotMember);
                    }
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM herald_messages WHERE topic = $1 AND id < $2 AND deleted_at IS NULL ",
                        "AND author_id NOT IN (SELECT blocked_id FROM herald_blocks WHERE user_id = $3) ",
                        "ORDER BY id DESC LIMIT $4"
                    ))
                    .bind(topic)
                    .bind(before.unwrap_or(i64::MAX))
                    .bind(viewer)
                    .bind(i64::from(limit.clamp(1, MAX_MESSAGE_PAGE)))
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows.iter().map(decode_message).collect::<Result<Vec<_>, _>>()?)
                })
            }

            fn mark_receipts<'a>(
                &'a self,
                user: &'a str,
                ids: &'a [i64],
                kind: $crate::chat::ReceiptKind,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<Vec<$crate::chat::ReceiptChange>, $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let read_at = (kind == $crate::chat::ReceiptKind::Read).then_some(at);
                    let mut tx = sqlx::Connection::begin(&mut *turn).await?;
                    let mut changed = Vec::new();
                    for id in $crate::distinct(ids) {
                        // Inserted, or updated only when it moves forward: `RETURNING`
                        // names exactly the receipts that changed.
                        let row: Option<(String, String)> = sqlx::query_as(concat!(
                            "INSERT INTO herald_receipts (message_id, user_id, delivered_at, read_at) ",
                            "SELECT m.id, $1, $2, $3 FROM herald_messages m WHERE m.id = $4 AND m.author_id <> $1 ",
                            "AND m.deleted_at IS NULL AND EXISTS (SELECT 1 FROM herald_members b ",
                            "WHERE b.topic = m.topic AND b.user_id = $1) ",
                            "ON CONFLICT (message_id, user_id) DO UPDATE SET ",
                            "delivered_at = COALESCE(herald_receipts.delivered_at, excluded.delivered_at), ",
                            "read_at = COALESCE(herald_receipts.read_at, excluded.read_at) ",
                            "WHERE herald_receipts.delivered_at IS NULL ",
                            "OR (excluded.read_at IS NOT NULL AND herald_receipts.read_at IS NULL) ",
                            "RETURNING (SELECT topic FROM herald_messages WHERE id = $4), ",
                            "(SELECT author_id FROM herald_messages WHERE id = $4)"
                        ))
                        .bind(user)
                        .bind(at)
                        .bind(read_at)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some((topic, author_id)) = row {
                            changed.push($crate::chat::ReceiptChange { message_id: id, topic, author_id });
                        }
                    }
                    tx.commit().await?;
                    Ok(changed)
                })
            }

            fn receipts<'a>(
                &'a self,
                viewer: &'a str,
                id: i64,
            ) -> $crate::BoxFuture<'a, Result<Vec<$crate::chat::Receipt>, $crate::chat::ChatError>> {
                Box::pin(async move {
                    self.message(viewer, id).await?;
                    let rows: Vec<(String, Option<i64>, Option<i64>)> = sqlx::query_as(
                        "SELECT user_id, delivered_at, read_at FROM herald_receipts WHERE message_id = $1 ORDER BY user_id",
                    )
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(user_id, delivered_at, read_at)| $crate::chat::Receipt { user_id, delivered_at, read_at })
                        .collect())
                })
            }

            fn react<'a>(
                &'a self,
                user: &'a str,
                id: i64,
                emoji: &'a str,
                add: bool,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<(String, bool), $crate::chat::ChatError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    // Read on the writer, so that no delete comes between the check and the write.
                    let topic: String =
                        sqlx::query_scalar(concat!("SELECT m.topic", $crate::chat::live_message_of_member!()))
                            .bind(id)
                            .bind(user)
                            .fetch_optional(&mut *turn)
                            .await?
                            .ok_or($crate::chat::ChatError::NotFound)?;
                    let changed = if add {
                        sqlx::query(concat!(
                            "INSERT INTO herald_reactions (message_id, user_id, emoji, created_at) VALUES ($1, $2, $3, $4) ",
                            "ON CONFLICT (message_id, user_id, emoji) DO NOTHING"
                        ))
                        .bind(id)
                        .bind(user)
                        .bind(emoji)
                        .bind(at)
                        .execute(&mut *turn)
                        .await?
                    } else {
                        sqlx::query("DELETE FROM herald_reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3")
                            .bind(id)
                            .bind(user)
                            .bind(emoji)
                            .execute(&mut *turn)
                            .await?
                    }
                    .rows_affected();
                    Ok((topic, changed > 0))
                })
            }

            fn reactions<'a>(
                &'a self,
                viewer: &'a str,
                id: i64,
            ) -> $crate::BoxFuture<'a, Result<Vec<$crate::chat::Reaction>, $crate::chat::ChatError>> {
                Box::pin(async move {
                    self.message(viewer, id).await?;
                    let rows: Vec<(String, String)> = sqlx::query_as(
                        "SELECT emoji, user_id FROM herald_reactions WHERE message_id = $1 ORDER BY created_at, user_id",
                    )
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?;
                    let mut reactions: Vec<$crate::chat::Reaction> = Vec::new();
                    for (emoji, user_id) in rows {
                        match reactions.iter_mut().find(|reaction| reaction.emoji == emoji) {
                            Some(reaction) => reaction.user_ids.push(user_id),
                            None => reactions.push($crate::chat::Reaction { emoji, user_ids: vec![user_id] }),
                        }
                    }
                    Ok(reactions)
                })
            }

            fn block<'a>(
                &'a self,
                user: &'a str,
                other: &'a str,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<bool, $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let inserted = sqlx::query(concat!(
                        "INSERT INTO herald_blocks (user_id, blocked_id, created_at) VALUES ($1, $2, $3) ",
                        "ON CONFLICT (user_id, blocked_id) DO NOTHING"
                    ))
                    .bind(user)
                    .bind(other)
                    .bind(at)
                    .execute(&mut *turn)
                    .await?
                    .rows_affected();
                    Ok(inserted > 0)
                })
            }

            fn unblock<'a>(
                &'a self,
                user: &'a str,
                other: &'a str,
            ) -> $crate::BoxFuture<'a, Result<bool, $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let deleted = sqlx::query("DELETE FROM herald_blocks WHERE user_id = $1 AND blocked_id = $2")
                        .bind(user)
                        .bind(other)
                        .execute(&mut *turn)
                        .await?
                        .rows_affected();
                    Ok(deleted > 0)
                })
            }

            fn create_call<'a>(
                &'a self,
                caller: &'a str,
                callee: &'a str,
                kind: &'a str,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<$crate::chat::Call, $crate::StoreError>> {
                use $crate::chat::{call_columns, decode_call};
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let row = sqlx::query(concat!(
                        "INSERT INTO herald_calls (caller_id, callee_id, type, state, created_at) ",
                        "VALUES ($1, $2, $3, 'ringing', $4) RETURNING ",
                        call_columns!()
                    ))
                    .bind(caller)
                    .bind(callee)
                    .bind(kind)
                    .bind(at)
                    .fetch_one(&mut *turn)
                    .await?;
                    Ok(decode_call(&row)?)
                })
            }

            fn step_call<'a>(
                &'a self,
                user: &'a str,
                id: i64,
                step: $crate::chat::CallStep,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<$crate::chat::Call, $crate::chat::ChatError>> {
                use $crate::chat::{CallStep, ChatError, call_columns, decode_call, step_rule};
                Box::pin(async move {
                    let (from_a, from_b, to, reason, callee_only) = step_rule(step);
                    // Ending an active call completes it; ending a ringing one cancels it.
                    let mut turn = self.write_turn().await?;
                    let row = sqlx::query(concat!(
                        "UPDATE herald_calls SET state = $1, ",
                        "reason = CASE WHEN $1 = 'active' THEN NULL ",
                        "ELSE COALESCE($2, CASE WHEN state = 'active' THEN 'completed' ELSE 'cancelled' END) END, ",
                        "answered_at = CASE WHEN $1 = 'active' THEN $3 ELSE answered_at END, ",
                        "ended_at = CASE WHEN $1 = 'active' THEN NULL ELSE $3 END ",
                        "WHERE id = $4 AND (state = $5 OR state = $6) ",
                        "AND ($7 = '' OR callee_id = $7 OR (caller_id = $7 AND $8 = 0)) RETURNING ",
                        call_columns!()
                    ))
                    .bind(to)
                    .bind(reason)
                    .bind(at)
                    .bind(id)
                    .bind(from_a)
                    .bind(from_b)
                    .bind(if step == CallStep::Miss { "" } else { user })
                    .bind(i64::from(callee_only))
                    .fetch_optional(&mut *turn)
                    .await?;
                    match row {
                        Some(row) => Ok(decode_call(&row)?),
                        None => {
                            drop(turn);
                            let call = self.call(if step == CallStep::Miss { "" } else { user }, id).await;
                            match call {
                                Ok(call) if callee_only && call.callee_id != user => Err(ChatError::NotFound),
                                Ok(_) => Err(ChatError::Conflict),
                                Err(error) => Err(error),
                            }
                        }
                    }
                })
            }

            fn call<'a>(
                &'a self,
                user: &'a str,
                id: i64,
            ) -> $crate::BoxFuture<'a, Result<$crate::chat::Call, $crate::chat::ChatError>> {
                use $crate::chat::{ChatError, call_columns, decode_call};
                Box::pin(async move {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        call_columns!(),
                        " FROM herald_calls WHERE id = $1 AND ($2 = '' OR caller_id = $2 OR callee_id = $2)"
                    ))
                    .bind(id)
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(ChatError::NotFound)?;
                    Ok(decode_call(&row)?)
                })
            }

            fn calls_of<'a>(
                &'a self,
                user: &'a str,
                limit: u32,
            ) -> $crate::BoxFuture<'a, Result<Vec<$crate::chat::Call>, $crate::StoreError>> {
                use $crate::chat::{call_columns, decode_call};
                Box::pin(async move {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        call_columns!(),
                        " FROM herald_calls WHERE caller_id = $1 OR callee_id = $1 ORDER BY id DESC LIMIT $2"
                    ))
                    .bind(user)
                    .bind(i64::from(limit.clamp(1, 200)))
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows.iter().map(decode_call).collect::<Result<Vec<_>, _>>()?)
                })
            }

            fn share_conversation<'a>(
                &'a self,
                a: &'a str,
                b: &'a str,
            ) -> $crate::BoxFuture<'a, Result<bool, $crate::StoreError>> {
                Box::pin(async move {
                    let found: Option<i64> = sqlx::query_scalar(concat!(
                        "SELECT CAST(1 AS BIGINT) FROM herald_members x JOIN herald_members y ON y.topic = x.topic ",
                        "WHERE x.user_id = $1 AND y.user_id = $2 LIMIT 1"
                    ))
                    .bind(a)
                    .bind(b)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(found.is_some())
                })
            }

            fn save_presence<'a>(
                &'a self,
                presence: &'a $crate::chat::StoredPresence,
            ) -> $crate::BoxFuture<'a, Result<(), $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    sqlx::query(concat!(
                        "INSERT INTO herald_presence (user_id, status, custom_status, last_seen, updated_at) ",
                        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, ",
                        "custom_status = excluded.custom_status, last_seen = excluded.last_seen, updated_at = excluded.updated_at"
                    ))
                    .bind(&presence.user_id)
                    .bind(&presence.status)
                    .bind(&presence.custom_status)
                    .bind(presence.last_seen)
                    .bind(presence.updated_at)
                    .execute(&mut *turn)
                    .await?;
                    Ok(())
                })
            }

            fn save_last_seen<'a>(
                &'a self,
                seen: &'a [(String, i64)],
            ) -> $crate::BoxFuture<'a, Result<(), $crate::StoreError>> {
                Box::pin(async move {
                    if seen.is_empty() {
                        return Ok(());
                    }
                    let mut turn = self.write_turn().await?;
                    let mut tx = sqlx::Connection::begin(&mut *turn).await?;
                    for (user, at) in seen {
                        sqlx::query(concat!(
                            "INSERT INTO herald_presence (user_id, status, custom_status, last_seen, updated_at) ",
                            "VALUES ($1, 'online', NULL, $2, $2) ON CONFLICT (user_id) DO UPDATE SET ",
                            "last_seen = excluded.last_seen, updated_at = excluded.updated_at"
                        ))
                        .bind(user)
                        .bind(*at)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn presences<'a>(
                &'a self,
                users: &'a [String],
            ) -> $crate::BoxFuture<'a, Result<Vec<$crate::chat::StoredPresence>, $crate::StoreError>> {
                Box::pin(async move {
                    let mut found = Vec::new();
                    for user in users {
                        let row: Option<(String, String, Option<String>, Option<i64>, i64)> = sqlx::query_as(
                            "SELECT user_id, status, custom_status, last_seen, updated_at FROM herald_presence WHERE user_id = $1",
                        )
                        .bind(user)
                        .fetch_optional(&self.pool)
                        .await?;
                        if let Some((user_id, status, custom_status, last_seen, updated_at)) = row {
                            found.push($crate::chat::StoredPresence { user_id, status, custom_status, last_seen, updated_at });
                        }
                    }
                    Ok(found)
                })
            }

            fn blocked<'a>(&'a self, user: &'a str) -> $crate::BoxFuture<'a, Result<Vec<String>, $crate::StoreError>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT blocked_id FROM herald_blocks WHERE user_id = $1 ORDER BY blocked_id")
                        .bind(user)
                        .fetch_all(&self.pool)
                        .await?)
                })
            }
        }
    };
}
pub(crate) use chat_store;
