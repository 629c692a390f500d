//! The short fault campaign CI runs (issue 6): a fixed seed, so a failure replays with
//! `cargo run -p pg_test --bin campaign -- --seed 6 --faults 12`. Checks I1, I2, I3 and I4 on the final state
//! ([`pg_test::checker`]). The long soak is the `campaign` binary (README).

#[test]
fn short_campaign_loses_nothing_and_keeps_one_leader_per_term() {
    if !pg_test::netns::available_or_skip(
        "short_campaign_loses_nothing_and_keeps_one_leader_per_term",
    ) {
        return;
    }
    let opts = pg_test::campaign::Options {
        seed: 6,
        faults: 12,
        ..Default::default()
    };
    let out = pg_test::campaign::run(&opts).unwrap();
    eprintln!("{}\nfault mix {:?}", out.summary, out.mix);
    assert!(
        out.check.ok(),
        "I1-I4: {}\n{}",
        out.summary,
        out.check.details()
    );
}
