//! A small exhaustive breadth-first model checker: every reachable state of a finite model is visited once
//! (deduplicated by a 64-bit fingerprint), every invariant is checked in every state, and a violation comes
//! back with the shortest trace that reaches it (replayed from the initial state, so it reproduces).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};

pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Action: Clone + Debug;
    fn init(&self) -> Self::State;
    /// Every enabled action and the state it leads to.
    fn next(&self, s: &Self::State, out: &mut Vec<(Self::Action, Self::State)>);
    /// Err(name and explanation) if an invariant fails in `s`.
    fn check(&self, s: &Self::State) -> Result<(), String>;
    /// Render a state for a counterexample.
    fn show(&self, s: &Self::State) -> String;
}

pub struct Outcome<A> {
    pub states: usize,
    pub max_depth: usize,
    pub complete: bool,
    pub violation: Option<Violation<A>>,
}

pub struct Violation<A> {
    pub invariant: String,
    pub trace: Vec<A>,
    pub rendered: String,
}

fn fp<T: Hash>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// Explore up to `max_states` states (`complete` says whether the space was exhausted).
pub fn check<M: Model>(m: &M, max_states: usize) -> Outcome<M::Action> {
    let init = m.init();
    let init_fp = fp(&init);
    // fingerprint -> (parent fingerprint, action from parent); the root maps to itself.
    let mut seen: HashMap<u64, (u64, Option<M::Action>)> = HashMap::new();
    seen.insert(init_fp, (init_fp, None));
    let mut queue: VecDeque<(M::State, u64, usize)> = VecDeque::new();
    queue.push_back((init, init_fp, 0));
    let mut out = Vec::new();
    let mut max_depth = 0;
    while let Some((s, sfp, depth)) = queue.pop_front() {
        max_depth = max_depth.max(depth);
        if let Err(why) = m.check(&s) {
            let trace = trace_to(&seen, sfp);
            let rendered = replay(m, &trace);
            return Outcome {
                states: seen.len(),
                max_depth,
                complete: false,
                violation: Some(Violation {
                    invariant: why,
                    trace,
                    rendered,
                }),
            };
        }
        if seen.len() >= max_states {
            return Outcome {
                states: seen.len(),
                max_depth,
                complete: false,
                violation: None,
            };
        }
        out.clear();
        m.next(&s, &mut out);
        for (a, t) in out.drain(..) {
            let tfp = fp(&t);
            if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(tfp) {
                e.insert((sfp, Some(a)));
                queue.push_back((t, tfp, depth + 1));
            }
        }
    }
    Outcome {
        states: seen.len(),
        max_depth,
        complete: true,
        violation: None,
    }
}

fn trace_to<A: Clone>(seen: &HashMap<u64, (u64, Option<A>)>, mut at: u64) -> Vec<A> {
    let mut trace = Vec::new();
    while let Some((parent, Some(a))) = seen.get(&at) {
        trace.push(a.clone());
        at = *parent;
    }
    trace.reverse();
    trace
}

/// Re-run the trace from the initial state, rendering each step (the trace is the reproducer).
fn replay<M: Model>(m: &M, trace: &[M::Action]) -> String {
    let mut s = m.init();
    let mut text = format!("initial:\n{}\n", m.show(&s));
    let mut out = Vec::new();
    for (i, a) in trace.iter().enumerate() {
        out.clear();
        m.next(&s, &mut out);
        let want = format!("{a:?}");
        let next = out
            .iter()
            .find(|(b, _)| format!("{b:?}") == want)
            .map(|(_, t)| t.clone())
            .expect("trace replays");
        s = next;
        text.push_str(&format!("step {}: {want}\n{}\n", i + 1, m.show(&s)));
    }
    text
}
