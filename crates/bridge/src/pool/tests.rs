//! The pool's tests: unit tests of allocation, quarantine and ranges, and proptest models.

use super::*;

fn pool(spec: &str, grace: Millis) -> Pool {
    Pool::new(spec.parse().expect("valid ranges"), grace)
}

#[test]
fn last_port_history_is_bounded() {
    let mut p = pool("100-109", 0);
    for i in 0..10_000 {
        let name = format!("s{i}");
        p.reserve(&name, 0).unwrap();
        p.release(&name, 0);
    }
    let bound = 2 * 10 + 1024 + 1;
    assert!(p.last_len <= bound, "{}", p.last_len);
    assert_eq!(p.last_ports().count(), p.last_len);
    // Records of services with neither a port nor history are reused.
    assert!(p.services.live <= bound, "{}", p.services.live);
    assert!(
        p.services.recs.len() <= bound + 1,
        "{}",
        p.services.recs.len()
    );
    assert!(
        p.services.arena.len() <= 16 * (bound + 1),
        "{}",
        p.services.arena.len()
    );
}

#[test]
fn service_index_survives_churn_and_removals() {
    // Reserve, release, forget and conflict many services on a small pool
    // so records are freed one by one (index deletion, arena compaction)
    // and in bulk (history pruning); every lookup must agree with a model.
    let mut p = pool("100-163", 10);
    let mut model: HashMap<String, u16> = HashMap::new();
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(12345);
    for step in 0..200_000u64 {
        let x: u64 = rng.random();
        let name = format!("svc-{}", x % 3000);
        match x % 7 {
            0..=2 => {
                if let Ok(r) = p.reserve(&name, step) {
                    model.insert(name.clone(), r.port());
                }
            }
            3 | 4 => {
                if p.release(&name, step).is_some() {
                    model.remove(&name);
                }
            }
            5 => {
                p.forget(&name);
                model.remove(&name);
            }
            _ => {
                let port = 100 + (x % 64) as u16;
                if let Some(lost) = p.mark_conflicted(port, step + 5) {
                    model.remove(&*lost);
                }
            }
        }
        assert_eq!(p.port_of(&name), model.get(&name).copied(), "{name}");
    }
    let mut held: Vec<(String, u16)> = p.reserved().map(|(s, q)| (s.to_string(), q)).collect();
    let mut want: Vec<(String, u16)> = model.into_iter().collect();
    held.sort();
    want.sort();
    assert_eq!(held, want);
    for (s, port) in &held {
        assert_eq!(p.state(*port), PortState::Reserved(Arc::from(s.as_str())));
    }
}

#[test]
fn parse_errors_name_the_fix() {
    let e = "11199-11100".parse::<PortRanges>().unwrap_err();
    assert!(e.to_string().contains("write it as 11100-11199"), "{e}");
    let e = "1-10,5-20".parse::<PortRanges>().unwrap_err();
    assert!(matches!(e, RangeError::Overlap(..)), "{e}");
    let e = "0-10".parse::<PortRanges>().unwrap_err();
    assert!(matches!(e, RangeError::OutOfBounds(_)), "{e}");
    let e = "1-70000".parse::<PortRanges>().unwrap_err();
    assert!(matches!(e, RangeError::OutOfBounds(_)), "{e}");
    let e = "a-b".parse::<PortRanges>().unwrap_err();
    assert!(matches!(e, RangeError::Syntax(_)), "{e}");
    assert_eq!("".parse::<PortRanges>().unwrap_err(), RangeError::Empty);
    let r: PortRanges = "12000-12049, 11100-11199".parse().unwrap();
    assert_eq!(r.to_string(), "11100-11199,12000-12049");
    assert_eq!(r.capacity(), 150);
}

#[test]
fn freed_port_is_found_again_after_wrap() {
    let mut p = pool("100-102", 0);
    for s in ["a", "b", "c"] {
        p.reserve(s, 0).unwrap();
    }
    assert!(matches!(
        p.reserve("d", 0),
        Err(PoolError::Exhausted { .. })
    ));
    assert_eq!(p.release("a", 0), Some(100));
    assert_eq!(p.reserve("d", 0).unwrap().port(), 100);
}

#[test]
fn sticky_within_and_after_grace() {
    let mut p = pool("100-199", 1000);
    let a = p.reserve("a", 0).unwrap().port();
    assert_eq!(p.reserve("a", 0).unwrap(), Reservation::AlreadyHeld(a));
    p.release("a", 10);
    assert_eq!(p.counts().quarantined, 1);
    // Another service can't take it while quarantined.
    assert_ne!(p.reserve("b", 20).unwrap().port(), a);
    assert_eq!(
        p.reserve("a", 500).unwrap(),
        Reservation::Assigned {
            port: a,
            outcome: Outcome::Sticky
        }
    );
    p.release("a", 600);
    let freed = p.expire(1600);
    assert_eq!(freed.len(), 1);
    assert_eq!(p.counts().quarantined, 0);
    assert_eq!(
        p.reserve("a", 2000).unwrap(),
        Reservation::Assigned {
            port: a,
            outcome: Outcome::Sticky
        }
    );
}

#[test]
fn exhaustion_message_names_counts_and_fix() {
    let mut p = pool("100-101", 1000);
    p.reserve("a", 0).unwrap();
    p.reserve("b", 0).unwrap();
    p.release("b", 0);
    let e = p.reserve("c", 0).unwrap_err().to_string();
    assert!(e.contains("100-101"), "{e}");
    assert!(e.contains("in use 1, quarantined 1, conflicted 0"), "{e}");
    assert!(e.contains("widen --ports"), "{e}");
}

#[test]
fn conflict_moves_the_service_and_expires() {
    let mut p = pool("100-101", 0);
    let a = p.reserve("a", 0).unwrap().port();
    assert_eq!(p.mark_conflicted(a, 50).as_deref(), Some("a"));
    let again = p.reserve("a", 0).unwrap().port();
    assert_ne!(again, a);
    assert_eq!(p.counts().conflicted, 1);
    p.expire(50);
    assert_eq!(p.counts().conflicted, 0);
    assert_eq!(p.counts().free, 1);
}

#[test]
fn a_name_freed_twice_before_a_take_is_reported_once() {
    // A conflict frees the record of a service with no other history;
    // reserving again and losing that port too frees it a second time.
    let mut p = pool("100-103", 0);
    p.track_changes();
    for _ in 0..2 {
        let port = p.reserve("a", 0).unwrap().port();
        assert_eq!(p.mark_conflicted(port, 50).as_deref(), Some("a"));
    }
    let mut seen = Vec::new();
    p.take_changed(|name, held| seen.push((name.to_string(), held)));
    assert_eq!(seen, vec![("a".to_string(), None)]);
}

#[test]
fn widen_keeps_everything() {
    let mut p = pool("100-101", 1000);
    p.reserve("a", 0).unwrap();
    p.reserve("b", 0).unwrap();
    p.release("b", 0);
    p.set_ranges("100-101,200-201".parse().unwrap()).unwrap();
    assert_eq!(p.port_of("a"), Some(100));
    assert_eq!(p.quarantined_port_of("b"), Some(101));
    assert_eq!(p.reserve("c", 0).unwrap().port(), 200);
    let e = p.set_ranges("100-100".parse().unwrap()).unwrap_err();
    assert!(matches!(e, PoolError::Narrowing { .. }));
    assert!(
        e.to_string().contains("101 is quarantined for b"),
        "names what holds the dropped port: {e}"
    );
}

#[test]
fn narrowing_drops_only_unused_ports_and_names_what_blocks_it() {
    let mut p = pool("100-109", 1000);
    p.reserve("a", 0).unwrap();
    p.reserve("b", 0).unwrap();
    let e = p.set_ranges("100-100".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("b holds 101"), "{e}");
    assert_eq!(p.counts().capacity, 10, "a refused change changes nothing");
    p.set_ranges("100-104".parse().unwrap()).unwrap();
    assert_eq!(p.counts().capacity, 5);
    assert_eq!((p.port_of("a"), p.port_of("b")), (Some(100), Some(101)));
    assert!(p.reserve_port("c", 107, 0).is_err(), "107 left the ranges");
    for s in ["c", "d", "e"] {
        p.reserve(s, 0).unwrap();
    }
    assert!(matches!(
        p.reserve("f", 0),
        Err(PoolError::Exhausted { .. })
    ));
}

#[test]
fn outcomes_name_their_metric_labels() {
    assert_eq!(Outcome::New.as_str(), outcome::NEW);
    assert_eq!(Outcome::Sticky.as_str(), outcome::STICKY);
    assert_eq!(Outcome::Restored.as_str(), outcome::RESTORED);
}

#[test]
fn a_taken_port_is_refused_with_its_state_in_words() {
    let mut p = pool("100-103", 50);
    p.reserve("docs", 0).unwrap();
    p.reserve("wiki", 0).unwrap();
    p.release("wiki", 0);
    p.mark_conflicted(102, 70);
    let refusal = |p: &mut Pool, port| p.reserve_port("api", port, 1).unwrap_err().to_string();
    assert_eq!(
        refusal(&mut p, 100),
        "port 100 is not free: reserved by `docs`"
    );
    assert_eq!(
        refusal(&mut p, 101),
        "port 101 is not free: quarantined for `wiki` until 50 ms"
    );
    assert_eq!(
        refusal(&mut p, 102),
        "port 102 is not free: held by another process (conflicted until 70 ms)"
    );
    assert!(refusal(&mut p, 99).contains("outside the configured ranges 100-103"));
    assert_eq!(p.grace_ms(), 50);
}

#[test]
fn forgetting_frees_the_record_only_without_history() {
    let mut p = pool("100-103", 50);
    p.restore("ghost", 101, &RestoreState::Reserved).unwrap();
    let live = p.services.live;
    // A record with a last port stays (sticky reuse later).
    assert_eq!(p.forget("ghost"), Some(101));
    assert_eq!(p.services.live, live);
    assert_eq!(p.last_port_of("ghost"), Some(101));
    // A conflict drops that history; the record then holds nothing and goes.
    p.reserve("ghost", 1).unwrap();
    assert_eq!(p.mark_conflicted(101, 10).as_deref(), Some("ghost"));
    assert_eq!(p.last_port_of("ghost"), None);
    assert_eq!(p.services.live, live - 1);
}

#[test]
fn restored_history_must_lie_in_the_ranges() {
    let mut p = pool("100-103", 0);
    p.restore_last_port("docs", 102);
    p.restore_last_port("far", 200);
    assert_eq!(p.last_port_of("docs"), Some(102));
    assert_eq!(p.last_port_of("far"), None);
    assert_eq!(
        p.reserve("docs", 0).unwrap().port(),
        102,
        "sticky from history"
    );
}

#[test]
fn a_lookup_never_returns_another_name_of_the_same_hash() {
    let mut p = pool("100-103", 0);
    p.reserve("docs", 0).unwrap();
    let hash = p.services.hash("docs");
    assert!(p.services.find("docs", hash).is_some());
    assert_eq!(p.services.find("wiki", hash), None, "same hash, other name");
}

#[test]
fn narrowing_names_at_most_ten_holders_and_counts_the_rest() {
    // The refusal of narrowing a pool whose first `n` ports are held.
    let refusal = |n: u16| {
        let mut p = pool("100-119", 0);
        for i in 0..n {
            p.reserve(&format!("s{i:02}"), 0).unwrap();
        }
        p.set_ranges("200-219".parse().unwrap())
            .unwrap_err()
            .to_string()
    };
    let err = refusal(12);
    assert!(!err.contains("s10 holds"), "{err}");
    assert!(err.contains("s09 holds 109 and 2 more;"), "{err}");
    let err = refusal(10);
    assert!(err.contains("s09 holds 109;"), "{err}");
}

#[test]
fn ranges_answer_membership_subsets_and_pairs() {
    let r = |s: &str| s.parse::<PortRanges>().expect("valid");
    let wide = r("100-199,300-399");
    assert!(r("100-150,300").is_subset_of(&wide));
    assert!(r("150-199").is_subset_of(&wide));
    assert!(!r("150-200").is_subset_of(&wide), "one past the end");
    assert!(!r("99-150").is_subset_of(&wide), "one before the start");
    assert!(!r("250").is_subset_of(&wide));
    assert_eq!(wide.as_pairs(), vec![[100, 199], [300, 399]]);
    for one in wide.ranges().iter().chain(r("500").ranges()) {
        assert!(!one.is_empty(), "{one:?}");
        assert_eq!(one.len() > 1, one.start < one.end);
    }
}

#[test]
fn the_cursor_walks_every_bitmap_word_and_wraps() {
    // 200 ports span four bitmap words (64, 64, 64, 8). Free ports are
    // planted in word 0 and in word 1 behind the cursor, then in word 0
    // while the cursor sits in word 1 (the search crosses the end of the
    // bitmap), in word 2 while it sits in word 0 (it skips a full word)
    // and in its own word behind it (it comes back round).
    let mut p = pool("100-299", 0);
    let mut holder: HashMap<u16, String> = HashMap::new();
    let take = |p: &mut Pool, holder: &mut HashMap<u16, String>, name: String| {
        let port = p.reserve(&name, 0).unwrap().port();
        holder.insert(port, name);
        port
    };
    for i in 0..70u16 {
        assert_eq!(take(&mut p, &mut holder, format!("s{i}")), 100 + i);
    }
    for i in (0..10).chain([65]) {
        assert_eq!(p.forget(&format!("s{i}")), Some(100 + i));
    }
    // The cursor goes on after 169 to the end before it wraps.
    for i in 0..130u16 {
        assert_eq!(take(&mut p, &mut holder, format!("n{i}")), 170 + i);
    }
    let refill: Vec<u16> = (0..11)
        .map(|i| take(&mut p, &mut holder, format!("r{i}")))
        .collect();
    let mut expected: Vec<u16> = (100..110).collect();
    expected.push(165);
    assert_eq!(refill, expected);
    assert!(matches!(
        p.reserve("full", 0),
        Err(PoolError::Exhausted { .. })
    ));
    // Cursor in word 1; the only free port is in word 0.
    assert_eq!(p.forget(&holder[&105]), Some(105));
    assert_eq!(take(&mut p, &mut holder, "again".into()), 105);
    // Cursor in word 0; the only free port is two words on.
    assert_eq!(p.forget(&holder[&240]), Some(240));
    assert_eq!(take(&mut p, &mut holder, "later".into()), 240);
    // Cursor in word 2; the only free port is in word 2 behind it.
    assert_eq!(p.forget(&holder[&230]), Some(230));
    assert_eq!(take(&mut p, &mut holder, "behind".into()), 230);
}

#[test]
fn a_quarantine_ends_at_its_deadline_for_every_way_to_reserve() {
    // One port, quarantined for "a" until 10: at 10 it is free for
    // another service, whether it asks for any port or for this one.
    for by_port in [false, true] {
        let mut p = pool("100-100", 10);
        p.reserve("a", 0).unwrap();
        assert_eq!(p.release("a", 0), Some(100));
        let ask = |p: &mut Pool, now| {
            if by_port {
                p.reserve_port("b", 100, now)
            } else {
                p.reserve("b", now)
            }
        };
        assert!(ask(&mut p, 9).is_err(), "by_port={by_port}");
        assert_eq!(ask(&mut p, 10).unwrap().port(), 100, "by_port={by_port}");
    }
}

#[test]
fn a_conflict_takes_the_port_out_of_the_history() {
    let mut p = pool("100-109", 0);
    p.reserve("a", 0).unwrap();
    assert_eq!(p.mark_conflicted(100, 50).as_deref(), Some("a"));
    assert_eq!(p.last_len, 0);
    assert_eq!(p.last_ports().count(), 0);
    assert_eq!(p.last_port_of("a"), None);
}

#[test]
fn the_history_keeps_twice_the_capacity_plus_1024_before_a_prune() {
    // Ten ports; 2 * 10 + 1024 idle services keep their last port (sticky
    // after grace); one more triggers the prune.
    let mut p = pool("100-109", 0);
    let keep = 2 * 10 + 1024;
    for i in 0..keep {
        let name = format!("s{i}");
        p.reserve(&name, 0).unwrap();
        p.release(&name, 0);
    }
    assert_eq!(p.last_len, keep, "nothing pruned at the bound");
    assert_eq!(p.last_port_of("s0"), Some(100));
    p.reserve("one-more", 0).unwrap();
    assert!(p.last_len < keep, "pruned past the bound: {}", p.last_len);
}

#[test]
fn a_service_asking_for_its_own_quarantined_port_gets_it_back() {
    let mut p = pool("100-109", 1000);
    assert_eq!(p.reserve("a", 0).unwrap().port(), 100);
    assert_eq!(p.release("a", 0), Some(100));
    let r = p.reserve_port("a", 100, 10).unwrap();
    assert!(
        matches!(
            r,
            Reservation::Assigned {
                port: 100,
                outcome: Outcome::Sticky
            }
        ),
        "{r:?}"
    );
    // Another service asking for it meanwhile is refused.
    assert_eq!(p.release("a", 20), Some(100));
    assert!(matches!(
        p.reserve_port("b", 100, 30),
        Err(PoolError::PortTaken { .. })
    ));
}

#[test]
fn the_name_arena_is_compacted_only_past_4096_bytes_and_half_garbage() {
    let mut s = services::Services::default();
    let add = |s: &mut services::Services, name: &str| {
        let h = s.hash(name);
        s.insert(name, h)
    };
    // Ten names of ten bytes; six freed: little garbage, no compaction.
    let small: Vec<u32> = (0..10)
        .map(|i| add(&mut s, &format!("small-{i:04}")))
        .collect();
    for &i in &small[..6] {
        s.remove(i);
    }
    assert_eq!(s.arena.len(), 100, "60 bytes of garbage are kept");
    // A thousand more; free them one by one: past 4096 bytes of garbage
    // but under half the arena, still nothing moves.
    let big: Vec<u32> = (0..1000)
        .map(|i| add(&mut s, &format!("big-{i:06}")))
        .collect();
    assert_eq!(s.arena.len(), 10_100);
    for &i in &big[..404] {
        s.remove(i);
    }
    assert_eq!(s.arena.len(), 10_100, "4100 bytes of garbage, under half");
    // Past half: compacted to the live names, which are all still found.
    for &i in &big[404..500] {
        s.remove(i);
    }
    assert_eq!(s.arena.len(), 4 * 10 + 500 * 10);
    for (j, &i) in big.iter().enumerate().skip(500) {
        let name = format!("big-{j:06}");
        assert_eq!(s.find(&name, s.hash(&name)), Some(i), "{name}");
    }
}
