use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::*;
use crate::event::{Event, FormatSlot};

/// A bounded in-memory outlet that records what it was offered and how it was closed.
struct RecordingOutlet {
    capacity: usize,
    received: Mutex<Vec<Arc<Delivery>>>,
    closed: Mutex<Option<CloseReason>>,
}

impl RecordingOutlet {
    fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { capacity, received: Mutex::default(), closed: Mutex::default() })
    }

    fn names(&self) -> Vec<String> {
        self.received.lock().iter().map(|d| d.event().name().to_owned()).collect()
    }
}

impl Outlet for RecordingOutlet {
    fn offer(&self, delivery: &Arc<Delivery>) -> Result<(), OfferError> {
        if self.closed.lock().is_some() {
            return Err(OfferError::Closed);
        }
        let mut received = self.received.lock();
        if received.len() >= self.capacity {
            return Err(OfferError::Full);
        }
        received.push(delivery.clone());
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        *self.closed.lock() = Some(reason);
    }
}

fn principal(id: &str) -> Principal {
    Principal::new(UserId::parse(id).unwrap())
}

fn delivery(name: &str) -> Arc<Delivery> {
    Arc::new(Delivery::new(Event::from_value(name, &serde_json::json!({"n": name})).unwrap()))
}

fn topic(name: &str) -> Topic {
    Topic::parse(name).unwrap()
}

#[test]
fn sessions_get_their_user_topic_and_global() {
    let hub = Hub::default();
    let alice_outlet = RecordingOutlet::new(10);
    let bob_outlet = RecordingOutlet::new(10);
    let alice = hub.register(principal("alice"), "ws", alice_outlet.clone());
    let _bob = hub.register(principal("bob"), "ws", bob_outlet.clone());

    assert_eq!(alice.topics(), vec![topic("global"), topic("user:alice")]);
    assert_eq!(hub.dispatch(&[topic("user:alice")], delivery("a")), 1);
    assert_eq!(hub.dispatch(&[topic("global")], delivery("g")), 2);
    assert_eq!(alice_outlet.names(), ["a", "g"]);
    assert_eq!(bob_outlet.names(), ["g"]);
}

#[test]
fn channel_publish_reaches_only_its_subscribers() {
    let hub = Hub::default();
    let inside = RecordingOutlet::new(10);
    let outside = RecordingOutlet::new(10);
    let member = hub.register(principal("a"), "ws", inside.clone());
    let _other = hub.register(principal("b"), "ws", outside.clone());
    assert_eq!(member.subscribe(topic("channel:7")), Ok(true));
    assert_eq!(member.subscribe(topic("channel:7")), Ok(false));

    assert_eq!(hub.dispatch(&[topic("channel:7")], delivery("c")), 1);
    assert_eq!(inside.names(), ["c"]);
    assert!(outside.names().is_empty());

    assert!(member.unsubscribe(&topic("channel:7")));
    assert_eq!(hub.dispatch(&[topic("channel:7")], delivery("c2")), 0);
    assert_eq!(hub.subscriber_count(&topic("channel:7")), 0);
}

#[test]
fn multi_topic_publish_reaches_each_session_once() {
    let hub = Hub::default();
    let outlet = RecordingOutlet::new(10);
    let session = hub.register(principal("a"), "ws", outlet.clone());
    session.subscribe(topic("channel:1")).unwrap();
    let topics = [topic("user:a"), topic("channel:1"), topic("global")];
    assert_eq!(hub.dispatch(&topics, delivery("once")), 1);
    assert_eq!(outlet.names(), ["once"]);
}

#[test]
fn access_rules_apply_to_subscribe() {
    let hub = Hub::default();
    let session = hub.register(principal("alice"), "ws", RecordingOutlet::new(1));
    let error = session.subscribe(topic("user:bob")).unwrap_err();
    assert_eq!(error.code(), ErrorCode::Forbidden);
    let error = session.subscribe(topic("room:1")).unwrap_err();
    assert_eq!(error.code(), ErrorCode::MembershipRequired);
}

#[test]
fn subscriptions_per_session_are_bounded() {
    let hub = Hub::new(HubLimits { max_topics_per_session: 3, ..HubLimits::default() });
    let session = hub.register(principal("a"), "ws", RecordingOutlet::new(1));
    // Own user topic and global count towards the limit.
    session.subscribe(topic("channel:1")).unwrap();
    assert_eq!(session.subscribe(topic("channel:2")), Err(SubscribeError::TooMany(3)));
}

#[test]
fn a_full_outlet_closes_only_that_session() {
    let hub = Hub::default();
    let slow = RecordingOutlet::new(2);
    let fast = RecordingOutlet::new(100);
    let _slow_session = hub.register(principal("slow"), "ws", slow.clone());
    let _fast_session = hub.register(principal("fast"), "ws", fast.clone());
    for i in 0..5 {
        hub.dispatch(&[topic("global")], delivery(&format!("e{i}")));
    }
    assert_eq!(*slow.closed.lock(), Some(CloseReason::SlowConsumer));
    assert_eq!(slow.names().len(), 2, "nothing queued beyond capacity");
    assert_eq!(fast.names().len(), 5);
    assert_eq!(*fast.closed.lock(), None);
    assert_eq!(hub.stats().connections, 1);
}

#[test]
fn dropping_the_guard_unregisters_everything() {
    let hub = Hub::default();
    let session = hub.register(principal("a"), "sse", RecordingOutlet::new(1));
    session.subscribe(topic("channel:1")).unwrap();
    let stats = |connections, topics| HubStats {
        connections,
        unique_users: connections,
        topics,
        subscriptions: topics,
        dispatched: 0,
        delivered: 0,
    };
    assert_eq!(hub.stats(), stats(1, 3));
    drop(session);
    assert_eq!(hub.stats(), stats(0, 0));
    assert!(hub.connections_by_transport().iter().all(|(_, active)| *active == 0));
}

#[test]
fn unique_users_count_devices_once() {
    let hub = Hub::default();
    let _a1 = hub.register(principal("a"), "ws", RecordingOutlet::new(1));
    let _a2 = hub.register(principal("a"), "sse", RecordingOutlet::new(1));
    let _b = hub.register(principal("b"), "ws", RecordingOutlet::new(1));
    let stats = hub.stats();
    assert_eq!((stats.connections, stats.unique_users), (3, 2));
}

#[test]
fn sweep_closes_expired_tokens() {
    let hub = Hub::default();
    let expired_outlet = RecordingOutlet::new(1);
    let valid_outlet = RecordingOutlet::new(1);
    let mut expired = principal("old");
    expired.expires_at = Some(1);
    let mut valid = principal("new");
    valid.expires_at = Some(u64::MAX / 2);
    let _old = hub.register(expired, "ws", expired_outlet.clone());
    let _new = hub.register(valid, "ws", valid_outlet.clone());
    assert_eq!(hub.sweep(None), 1);
    assert_eq!(*expired_outlet.closed.lock(), Some(CloseReason::TokenExpired));
    assert_eq!(*valid_outlet.closed.lock(), None);
}

#[tokio::test(start_paused = true)]
async fn sweep_closes_idle_sessions_but_not_active_ones() {
    let hub = Hub::default();
    let idle_outlet = RecordingOutlet::new(1);
    let busy_outlet = RecordingOutlet::new(1);
    let _idle = hub.register(principal("idle"), "ws", idle_outlet.clone());
    let busy = hub.register(principal("busy"), "ws", busy_outlet.clone());
    tokio::time::advance(Duration::from_secs(50)).await;
    busy.touch();
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(hub.sweep(Some(Duration::from_secs(60))), 1);
    assert_eq!(*idle_outlet.closed.lock(), Some(CloseReason::IdleTimeout));
    assert_eq!(*busy_outlet.closed.lock(), None);
}

#[test]
fn fan_out_shares_one_encoding() {
    let hub = Hub::default();
    let outlets: Vec<_> = (0..50).map(|_| RecordingOutlet::new(4)).collect();
    let _sessions: Vec<_> =
        outlets.iter().enumerate().map(|(i, o)| hub.register(principal(&format!("u{i}")), "ws", o.clone())).collect();
    hub.dispatch(&[topic("global")], delivery("shared"));
    let slot: FormatSlot<bytes::Bytes> = FormatSlot::new(0);
    let first = outlets[0].received.lock()[0].encoded(slot, |e| bytes::Bytes::from(e.data().get().to_owned()));
    for outlet in &outlets {
        let bytes = outlet.received.lock()[0].encoded(slot, |_| panic!("encoded twice"));
        assert_eq!(bytes.as_ptr(), first.as_ptr(), "every recipient shares the same buffer");
    }
}

#[test]
fn a_closed_outlet_is_forgotten_at_the_next_dispatch() {
    let hub = Hub::default();
    let outlet = RecordingOutlet::new(10);
    let session = hub.register(principal("gone"), "ws", outlet.clone());
    outlet.close(CloseReason::ServerShutdown);
    assert_eq!(hub.dispatch(&[topic("global")], delivery("x")), 0);
    assert_eq!(hub.stats().connections, 0);
    drop(session);
}

fn positioned(name: &str, offset: u64) -> Arc<Delivery> {
    let event = Event::from_value(name, &serde_json::json!({})).unwrap();
    Arc::new(Delivery::new(event.at_stream(Position::new(Arc::from("e1"), offset))))
}

#[test]
fn a_held_session_gets_history_first_then_what_was_held_without_duplicates() {
    let hub = Hub::default();
    let outlet = RecordingOutlet::new(100);
    let session = hub.register(principal("alice"), "test", outlet.clone());
    let hold = session.hold();
    hub.dispatch(&[topic("user:alice")], positioned("live-3", 3));
    hub.dispatch(&[topic("user:alice")], positioned("live-4", 4));
    hub.dispatch(&[topic("user:alice")], delivery("unpositioned"));
    assert!(outlet.names().is_empty(), "nothing passes while held");
    assert!(hold.release(&[positioned("history-2", 2), positioned("history-3", 3)]));
    assert_eq!(outlet.names(), ["history-2", "history-3", "live-4", "unpositioned"]);
    hub.dispatch(&[topic("user:alice")], positioned("after", 5));
    assert_eq!(outlet.names().last().map(String::as_str), Some("after"), "released: live again");
}

#[test]
fn nested_holds_release_what_was_held_with_the_last_one() {
    let hub = Hub::default();
    let outlet = RecordingOutlet::new(100);
    let session = hub.register(principal("alice"), "test", outlet.clone());
    let first = session.hold();
    let second = session.hold();
    hub.dispatch(&[topic("global")], positioned("live-7", 7));
    assert!(first.release(&[positioned("history-a", 5)]));
    assert_eq!(outlet.names(), ["history-a"], "the second hold still holds live events");
    drop(second);
    assert_eq!(outlet.names(), ["history-a", "live-7"]);
}

#[test]
fn too_much_held_closes_the_session_as_a_slow_consumer() {
    let hub = Hub::new(HubLimits { max_held: 2, ..HubLimits::default() });
    let outlet = RecordingOutlet::new(100);
    let session = hub.register(principal("alice"), "test", outlet.clone());
    let _hold = session.hold();
    for n in 0..3 {
        hub.dispatch(&[topic("global")], positioned("live", n));
    }
    assert_eq!(*outlet.closed.lock(), Some(CloseReason::SlowConsumer));
    assert_eq!(hub.stats().connections, 0);
}

#[derive(Default)]
struct RecordingInterest {
    changes: Mutex<Vec<(String, bool)>>,
    users: Mutex<Vec<(String, usize)>>,
}

impl Interest for RecordingInterest {
    fn topic(&self, topic: &Topic, subscribed: bool) {
        self.changes.lock().push((topic.to_string(), subscribed));
    }
    fn user(&self, user: &UserId, connections: usize) {
        self.users.lock().push((user.to_string(), connections));
    }
}

#[test]
fn interest_is_told_of_first_and_last_subscribers_only() {
    let hub = Hub::default();
    let early = hub.register(principal("early"), "test", RecordingOutlet::new(1));
    let interest = Arc::new(RecordingInterest::default());
    hub.set_interest(interest.clone());
    let mut initial = interest.changes.lock().clone();
    initial.sort();
    assert_eq!(initial, [("global".to_owned(), true), ("user:early".to_owned(), true)], "existing topics reported");
    interest.changes.lock().clear();
    let a = hub.register(principal("alice"), "test", RecordingOutlet::new(1));
    let b = hub.register(principal("alice"), "test", RecordingOutlet::new(1));
    a.subscribe(topic("channel:x")).unwrap();
    b.subscribe(topic("channel:x")).unwrap();
    a.unsubscribe(&topic("channel:x"));
    drop(a);
    assert_eq!(*interest.changes.lock(), [("user:alice".to_owned(), true), ("channel:x".to_owned(), true)]);
    drop(b);
    drop(early);
    let changes = interest.changes.lock().clone();
    assert!(changes.contains(&("channel:x".to_owned(), false)));
    assert!(changes.contains(&("user:alice".to_owned(), false)));
    assert!(changes.contains(&("global".to_owned(), false)), "the last session gone: global too");
    assert_eq!(
        &interest.users.lock()[1..],
        [
            ("alice".to_owned(), 1),
            ("alice".to_owned(), 2),
            ("alice".to_owned(), 1),
            ("alice".to_owned(), 0),
            ("early".to_owned(), 0)
        ]
    );
}

#[test]
fn a_session_registered_held_gets_nothing_live_until_released() {
    let hub = Hub::default();
    let outlet = RecordingOutlet::new(100);
    let (session, hold) = hub.register_held(principal("alice"), "test", outlet.clone());
    hub.dispatch(&[topic("user:alice")], positioned("live", 9));
    assert!(hub.send_to(session.id(), delivery("direct")));
    assert!(outlet.names().is_empty());
    hold.release(&[positioned("missed", 8)]);
    assert_eq!(outlet.names(), ["missed", "live", "direct"]);
}

fn from(name: &str, sender: &str) -> Arc<Delivery> {
    let event = Event::from_value(name, &serde_json::json!({})).unwrap().from_sender(UserId::parse(sender).unwrap());
    Arc::new(Delivery::new(event))
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

#[test]
fn conversation_topics_need_a_membership_checked_subscribe() {
    let hub = Hub::default();
    let alice = hub.register(principal("alice"), "test", RecordingOutlet::new(10));
    let room = topic("room:r1");
    assert_eq!(alice.subscribe(room.clone()).unwrap_err().code(), ErrorCode::MembershipRequired);
    assert!(alice.subscribe_member(room.clone()).unwrap());
    assert!(alice.is_subscribed(&room));
    assert_eq!(
        alice.subscribe_member(topic("user:bob")).unwrap_err().code(),
        ErrorCode::Forbidden,
        "the member path does not open other kinds of topic"
    );
}

#[test]
fn sessions_skip_what_users_they_blocked_send() {
    let hub = Hub::default();
    let (alice_out, bob_out) = (RecordingOutlet::new(10), RecordingOutlet::new(10));
    let alice = hub.register(principal("alice"), "test", alice_out.clone());
    let bob = hub.register(principal("bob"), "test", bob_out.clone());
    let room = topic("room:r1");
    alice.subscribe_member(room.clone()).unwrap();
    bob.subscribe_member(room.clone()).unwrap();
    alice.load_blocked(vec![user("mallory")]);
    hub.dispatch(std::slice::from_ref(&room), from("from-mallory", "mallory"));
    hub.dispatch(std::slice::from_ref(&room), from("from-carol", "carol"));
    assert_eq!(alice_out.names(), ["from-carol"]);
    assert_eq!(bob_out.names(), ["from-mallory", "from-carol"], "a block is one user's");
    // A newer list travels as a directive on the user's own topic; a late store load
    // does not overwrite it.
    let blocks = Directive::Blocks { user: user("alice"), blocked: Arc::from(vec![user("carol")]) };
    let event = Event::from_value("block:updated", &serde_json::json!({})).unwrap().with_directive(blocks);
    hub.dispatch(&[topic("user:alice")], Arc::new(Delivery::new(event)));
    alice.load_blocked(vec![user("mallory")]);
    hub.dispatch(std::slice::from_ref(&room), from("from-mallory", "mallory"));
    hub.dispatch(std::slice::from_ref(&room), from("from-carol", "carol"));
    assert_eq!(alice_out.names(), ["from-carol", "block:updated", "from-mallory"]);
    drop(bob);
}

#[test]
fn an_unsubscribe_directive_removes_one_users_sessions_after_delivery() {
    let hub = Hub::default();
    let (bob_phone, bob_laptop, carol_out) =
        (RecordingOutlet::new(10), RecordingOutlet::new(10), RecordingOutlet::new(10));
    let room = topic("room:r1");
    let sessions: Vec<SessionGuard> = [("bob", &bob_phone), ("bob", &bob_laptop), ("carol", &carol_out)]
        .into_iter()
        .map(|(name, outlet)| {
            let session = hub.register(principal(name), "test", outlet.clone());
            session.subscribe_member(room.clone()).unwrap();
            session
        })
        .collect();
    assert_eq!(hub.users_on(&room), [user("bob"), user("carol")]);
    let left = Event::from_value("chat:member-left", &serde_json::json!({}))
        .unwrap()
        .with_directive(Directive::Unsubscribe(user("bob")));
    hub.dispatch(std::slice::from_ref(&room), Arc::new(Delivery::new(left)));
    hub.dispatch(std::slice::from_ref(&room), delivery("after"));
    assert_eq!(bob_phone.names(), ["chat:member-left"], "the removed member is told, then unsubscribed");
    assert_eq!(bob_laptop.names(), ["chat:member-left"]);
    assert_eq!(carol_out.names(), ["chat:member-left", "after"]);
    assert!(!sessions[0].is_subscribed(&room) && sessions[2].is_subscribed(&room));
    assert_eq!(hub.users_on(&room), [user("carol")]);
}

#[derive(Default)]
struct RecordingAttendance(Mutex<Vec<(String, String, bool)>>);

impl Attendance for RecordingAttendance {
    fn changed(&self, topic: &Topic, principal: &Principal, present: bool) {
        self.0.lock().push((topic.to_string(), principal.user_id.to_string(), present));
    }
}

#[test]
fn attendance_reports_a_users_first_and_last_session_on_a_conversation() {
    let hub = Hub::default();
    let attendance = Arc::new(RecordingAttendance::default());
    hub.set_attendance(attendance.clone());
    let room = topic("room:r1");
    let phone = hub.register(principal("bob"), "test", RecordingOutlet::new(10));
    let laptop = hub.register(principal("bob"), "test", RecordingOutlet::new(10));
    phone.subscribe_member(room.clone()).unwrap();
    laptop.subscribe_member(room.clone()).unwrap();
    phone.subscribe(topic("channel:c")).unwrap();
    assert_eq!(hub.attendance_of(&room, &user("bob")), 2);
    phone.unsubscribe(&room);
    drop(laptop);
    assert_eq!(
        *attendance.0.lock(),
        [("room:r1".to_string(), "bob".to_string(), true), ("room:r1".to_string(), "bob".to_string(), false)],
        "one join and one leave for two devices; channels are not conversations"
    );
    assert_eq!(hub.attendance_of(&room, &user("bob")), 0);
}

#[test]
fn counts_dispatches_and_deliveries_and_names_the_largest_topics() {
    let hub = Hub::default();
    let outlets: Vec<_> = (0..3).map(|_| RecordingOutlet::new(16)).collect();
    let sessions: Vec<_> = outlets
        .iter()
        .enumerate()
        .map(|(n, outlet)| hub.register(principal(&format!("u{n}")), "ws", outlet.clone()))
        .collect();
    sessions[0].subscribe(topic("channel:big")).unwrap();
    sessions[1].subscribe(topic("channel:big")).unwrap();
    sessions[2].subscribe(topic("channel:big")).unwrap();
    sessions[0].subscribe(topic("channel:small")).unwrap();
    hub.dispatch(&[topic("channel:big")], delivery("a"));
    hub.dispatch(&[topic("channel:small")], delivery("b"));
    hub.dispatch(&[topic("channel:none")], delivery("c"));
    let stats = hub.stats();
    assert_eq!((stats.dispatched, stats.delivered), (3, 4));
    // Every session is on `global` too (3 subscribers), and on its own user topic (1).
    let largest = hub.largest_topics(3);
    assert_eq!(largest.len(), 3);
    assert_eq!((largest[0].0.as_str(), largest[0].1), ("channel:big", 3));
    assert_eq!((largest[1].0.as_str(), largest[1].1), ("global", 3));
    assert_eq!(largest[2].1, 1);
    assert!(hub.largest_topics(0).is_empty());
}
