use super::*;

fn check(input: &str, expect: Result<(TopicKind, &str), &str>) {
    match (Topic::parse(input), expect) {
        (Ok(topic), Ok((kind, id))) => {
            assert_eq!(topic.kind(), kind, "{input}");
            assert_eq!(topic.id(), id, "{input}");
            assert_eq!(topic.as_str(), input);
        }
        (Err(error), Err(fragment)) => {
            assert!(error.to_string().contains(fragment), "{input}: {error} lacks {fragment:?}")
        }
        (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn parses_every_kind() {
    check("user:42", Ok((TopicKind::User, "42")));
    check("channel:abc-1_2.x", Ok((TopicKind::Channel, "abc-1_2.x")));
    check("room:r1", Ok((TopicKind::Room, "r1")));
    check("group:g@x", Ok((TopicKind::Group, "g@x")));
    check("chat:c|1", Ok((TopicKind::Chat, "c|1")));
    check("global", Ok((TopicKind::Global, "")));
}

#[test]
fn refuses_malformed_names() {
    check("", Err("empty"));
    check("user:", Err("empty"));
    check("users:1", Err("unknown topic kind"));
    check("global:1", Err("unknown topic kind"));
    check("nocolon", Err("unknown topic kind"));
    check("user:a b", Err("may only contain"));
    check("user:a:b", Err("may only contain"));
    check("channel:é", Err("may only contain"));
    check(&format!("user:{}", "x".repeat(MAX_ID_LEN + 1)), Err("longer than"));
}

#[test]
fn error_message_for_huge_input_is_short() {
    let huge = "x".repeat(100_000);
    let message = Topic::parse(&huge).unwrap_err().to_string();
    assert!(message.len() < 200, "{}", message.len());
}

#[test]
fn typed_constructors_match_parse() {
    let built = Topic::with_id(TopicKind::Channel, "7").unwrap();
    assert_eq!(built, Topic::parse("channel:7").unwrap());
    assert!(Topic::with_id(TopicKind::User, "bad id").is_err());
    assert_eq!(Topic::global(), Topic::parse("global").unwrap());
}
