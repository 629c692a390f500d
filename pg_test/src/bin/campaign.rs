//! The fault campaign (issue 6): `cargo run -p pg_test --bin campaign -- [--seed N] [--faults N]
//! [--nodes N] [--policy 'any 1'] [--failover-timeout MS] [--hold-ms LO,HI]`. Needs root (network namespaces).
//! Prints the seed first, one line per round, the fault mix, and one summary line; exits 1 on any invariant
//! violation or a cluster that did not recover (with the command that replays the seed).

use pg_test::campaign::{run, Options};

fn main() {
    let mut o = Options {
        seed: pg_test::random_hex(8)
            .chars()
            .fold(0u64, |a, ch| a * 16 + ch.to_digit(16).unwrap_or(0) as u64),
        ..Options::default()
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seed" => o.seed = v.parse().expect("--seed N"),
            "--faults" => o.faults = v.parse().expect("--faults N"),
            "--nodes" => o.nodes = v.parse().expect("--nodes N"),
            "--policy" => o.policy = v,
            "--failover-timeout" => {
                o.failover_timeout_ms = v.parse().expect("--failover-timeout MS")
            }
            "--hold-ms" => {
                let (lo, hi) = v.split_once(',').expect("--hold-ms LO,HI");
                o.hold_ms = (lo.parse().expect("LO"), hi.parse().expect("HI"));
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    if let Err(why) = pg_test::netns::available() {
        eprintln!("campaign: {why}");
        std::process::exit(2);
    }
    println!("campaign: seed {}", o.seed);
    match run(&o) {
        Ok(out) => {
            println!("campaign: fault mix {:?}", out.mix);
            if !out.check.ok() {
                println!("{}", out.check.details());
            }
            println!("{}", out.summary);
            if !out.check.ok() {
                println!("reproduce: cargo run -p pg_test --bin campaign -- --seed {} --faults {} --nodes {} --policy '{}'", o.seed, o.faults, o.nodes, o.policy);
                std::process::exit(1);
            }
        }
        Err(e) => {
            println!("campaign seed={} FAILED: {e}", o.seed);
            std::process::exit(1);
        }
    }
}
