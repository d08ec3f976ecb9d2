//! Where a forward's time goes: a per-phase wall-clock profile, independent of the device.
//!
//! A forward calls [`Profile::begin`] once, then [`Profile::mark`]`(block, phase)` after each
//! phase; a mark charges the time since the previous mark (or `begin`) to `(block, phase)`.
//! Marks accumulate over forwards, so a profile of R runs reports per-run means.
//!
//! `mark` only reads [`Instant::now`]: a device forward whose work is asynchronous must
//! synchronize its stream before each mark (or use [`Profile::mark_after`] with the
//! synchronize as the closure), or every phase's time lands in the phase that next waits.
//! When the forward holds no profile (`Option<Profile>` is `None`) a mark is one branch.
use std::time::{Duration, Instant};

/// One `(block, phase)` cell: the time charged to it over all runs and how many marks.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileEntry {
    /// The block index, or `None` for phases outside the blocks (patch embed, head).
    pub block: Option<usize>,
    pub phase: &'static str,
    pub elapsed: Duration,
    pub marks: u64,
}

/// Phases with their times, in first-mark order.
pub type PhaseTimes = Vec<(&'static str, Duration)>;

/// Per-phase wall-clock times of one or more forwards (see the module docs).
#[derive(Clone, Debug)]
pub struct Profile {
    last: Instant,
    runs: u64,
    /// In first-mark order; a forward has at most a few hundred cells, so lookup is a scan
    /// from the most recently used cell (marks come in the same order every run).
    entries: Vec<ProfileEntry>,
    cursor: usize,
}

impl Default for Profile {
    fn default() -> Self {
        Self::new()
    }
}

impl Profile {
    /// An empty profile.
    pub fn new() -> Self {
        Profile {
            last: Instant::now(),
            runs: 0,
            entries: Vec::new(),
            cursor: 0,
        }
    }

    /// Starts a forward: the clock restarts and the run count goes up by one.
    pub fn begin(&mut self) {
        self.runs += 1;
        self.cursor = 0;
        self.last = Instant::now();
    }

    /// Charges the time since the previous mark (or [`Profile::begin`]) to `(block, phase)`.
    pub fn mark(&mut self, block: Option<usize>, phase: &'static str) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.last);
        self.last = now;
        self.add(block, phase, dt);
    }

    /// Runs `sync` (a device synchronize), then marks: the phase is charged with the work
    /// it queued, not only with the time to queue it.
    pub fn mark_after<E>(
        &mut self,
        block: Option<usize>,
        phase: &'static str,
        sync: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        sync()?;
        self.mark(block, phase);
        Ok(())
    }

    /// Adds `dt` to `(block, phase)` without reading the clock.
    pub fn add(&mut self, block: Option<usize>, phase: &'static str, dt: Duration) {
        let n = self.entries.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let e = &mut self.entries[i];
            if e.block == block && e.phase == phase {
                e.elapsed += dt;
                e.marks += 1;
                self.cursor = i + 1;
                return;
            }
        }
        self.entries.push(ProfileEntry {
            block,
            phase,
            elapsed: dt,
            marks: 1,
        });
        self.cursor = self.entries.len();
    }

    /// Forwards profiled ([`Profile::begin`] calls); at least 1 for the means.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Every cell, in first-mark order.
    pub fn entries(&self) -> &[ProfileEntry] {
        &self.entries
    }

    /// The time of all marks, summed over runs.
    pub fn total(&self) -> Duration {
        self.entries.iter().map(|e| e.elapsed).sum()
    }

    /// Per phase, summed over blocks and runs, in first-mark order.
    pub fn by_phase(&self) -> PhaseTimes {
        let mut out: PhaseTimes = Vec::new();
        for e in &self.entries {
            match out.iter_mut().find(|(p, _)| *p == e.phase) {
                Some((_, t)) => *t += e.elapsed,
                None => out.push((e.phase, e.elapsed)),
            }
        }
        out
    }

    /// Per block (`None` = outside the blocks), each with its phases, in first-mark order.
    pub fn by_block(&self) -> Vec<(Option<usize>, PhaseTimes)> {
        let mut out: Vec<(Option<usize>, PhaseTimes)> = Vec::new();
        for e in &self.entries {
            let i = match out.iter().position(|(b, _)| *b == e.block) {
                Some(i) => i,
                None => {
                    out.push((e.block, Vec::new()));
                    out.len() - 1
                }
            };
            let row = &mut out[i].1;
            match row.iter_mut().find(|(p, _)| *p == e.phase) {
                Some((_, t)) => *t += e.elapsed,
                None => row.push((e.phase, e.elapsed)),
            }
        }
        out
    }

    fn per_run(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.runs.max(1) as f64
    }

    /// Two tables, in milliseconds per run: every phase summed over blocks (with its share),
    /// then one row per block with a column per phase.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let ms = |d: Duration| self.per_run(d) * 1e3;
        let total = ms(self.total());
        let mut s = String::new();
        let _ = writeln!(
            s,
            "profile: {} run{}, {:.1} ms per run",
            self.runs.max(1),
            if self.runs == 1 { "" } else { "s" },
            total
        );
        let phases = self.by_phase();
        let _ = writeln!(s, "{:<12} {:>10} {:>7}", "phase", "ms", "share");
        for (p, d) in &phases {
            let v = ms(*d);
            let share = if total > 0.0 { 100.0 * v / total } else { 0.0 };
            let _ = writeln!(s, "{p:<12} {v:>10.2} {share:>6.1}%");
        }
        let _ = writeln!(s);
        let _ = write!(s, "{:<6} {:>9}", "block", "total");
        for (p, _) in &phases {
            let _ = write!(s, " {:>9}", short(p));
        }
        let _ = writeln!(s);
        for (b, row) in self.by_block() {
            let name = b.map_or("-".to_string(), |b| b.to_string());
            let sum: Duration = row.iter().map(|(_, d)| *d).sum();
            let _ = write!(s, "{name:<6} {:>9.2}", ms(sum));
            for (p, _) in &phases {
                match row.iter().find(|(q, _)| q == p) {
                    Some((_, d)) => {
                        let _ = write!(s, " {:>9.2}", ms(*d));
                    }
                    None => {
                        let _ = write!(s, " {:>9}", "");
                    }
                }
            }
            let _ = writeln!(s);
        }
        s
    }

    /// `{"runs", "total_s", "phases": [{"phase", "s", "share"}], "blocks": [{"block", "total_s",
    /// "phases": {name: s}}]}`, seconds per run.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let total = self.per_run(self.total());
        let phases: Vec<Value> = self
            .by_phase()
            .into_iter()
            .map(|(p, d)| {
                let v = self.per_run(d);
                json!({"phase": p, "s": v, "share": if total > 0.0 { v / total } else { 0.0 }})
            })
            .collect();
        let blocks: Vec<Value> = self
            .by_block()
            .into_iter()
            .map(|(b, row)| {
                let sum: Duration = row.iter().map(|(_, d)| *d).sum();
                let m: Map<String, Value> = row
                    .into_iter()
                    .map(|(p, d)| (p.to_string(), json!(self.per_run(d))))
                    .collect();
                json!({"block": b, "total_s": self.per_run(sum), "phases": m})
            })
            .collect();
        json!({"runs": self.runs.max(1), "total_s": total, "phases": phases, "blocks": blocks})
    }
}

/// A phase name cut to a table column.
fn short(p: &str) -> &str {
    match p.char_indices().nth(9) {
        Some((i, _)) => &p[..i],
        None => p,
    }
}

/// Marks `(block, phase)` when a profile is on; nothing else when it is off.
#[inline(always)]
pub(crate) fn mark(p: &mut Option<Profile>, block: Option<usize>, phase: &'static str) {
    if let Some(p) = p {
        p.mark(block, phase);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_by_phase_and_block() {
        let mut p = Profile::new();
        for _ in 0..2 {
            p.begin();
            p.add(None, "patch embed", Duration::from_millis(3));
            for b in 0..3 {
                p.add(Some(b), "qkv", Duration::from_millis(2));
                p.add(Some(b), "attention", Duration::from_millis(1));
            }
            p.add(None, "head", Duration::from_millis(1));
        }
        assert_eq!(p.runs(), 2);
        assert_eq!(p.total(), Duration::from_millis(2 * (3 + 9 + 1)));
        let ph = p.by_phase();
        assert_eq!(
            ph.iter().map(|x| x.0).collect::<Vec<_>>(),
            ["patch embed", "qkv", "attention", "head"]
        );
        assert_eq!(ph[1].1, Duration::from_millis(12));
        let bl = p.by_block();
        assert_eq!(bl.len(), 4);
        assert_eq!(bl[0].0, None);
        assert_eq!(bl[0].1.len(), 2);
        assert_eq!(bl[2].0, Some(1));
        let j = p.to_json();
        assert!((j["total_s"].as_f64().unwrap_or(f64::NAN) - 0.013).abs() < 1e-9);
        assert_eq!(j["blocks"].as_array().map_or(0, Vec::len), 4);
        let t = p.table();
        for name in ["patch embed", "qkv", "attention", "head"] {
            assert!(t.contains(name), "{t}");
        }
        assert!(t.contains("13.0 ms per run"), "{t}");
    }

    #[test]
    fn marks_measure_wall_time() {
        let mut p = Profile::new();
        let t = Instant::now();
        p.begin();
        std::thread::sleep(Duration::from_millis(5));
        p.mark(Some(0), "a");
        std::thread::sleep(Duration::from_millis(5));
        let r: Result<(), ()> = p.mark_after(Some(0), "b", || Ok(()));
        assert!(r.is_ok());
        let wall = t.elapsed();
        assert!(p.total() <= wall && p.total() >= Duration::from_millis(10));
        let mut off: Option<Profile> = None;
        mark(&mut off, None, "x");
        assert!(off.is_none());
    }
}
