//! The campaign's report: what was injected and written, what the oracle
//! found; the exit code follows the findings.

use std::sync::atomic::Ordering;

use crate::inject::FaultCounts;
use crate::oracle::Changes;
use crate::slots::Slots;
use crate::writers::Counts;

/// What the run did besides the faults.
pub struct Run<'a> {
    pub faults: &'a FaultCounts,
    pub writes: &'a Counts,
    pub llm_requests: u64,
    pub service_starts: u32,
    /// Services that had to be SIGKILLed at the end (SIGTERM not obeyed).
    pub unclean_stops: u32,
    /// Queue rows the backstop applied (the claim passed them over).
    pub backstop_recoveries: u64,
}

/// Prints the report; returns the number of findings (0: passed).
pub fn print(run: &Run<'_>, changes: &Changes, slots: &Slots) -> u64 {
    println!("\nFaults injected:");
    let mut total = 0;
    for (kind, n) in run.faults {
        println!("  {kind:<32} {n}");
        total += n;
    }
    println!("  {:<32} {total}", "total");
    let w = run.writes;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    println!("\nWorkload:");
    println!("  changes written                  {}", get(&w.written));
    println!("  changes committed                {}", get(&w.committed));
    println!(
        "    of them poison (intended)      {}",
        get(&w.poison_committed)
    );
    println!("  changes rolled back              {}", get(&w.rolled_back));
    println!("  transactions failed by faults    {}", get(&w.failed_txns));
    println!("  long transactions                {}", get(&w.long_txns));
    println!("  LLM requests                     {}", run.llm_requests);
    println!("  service process starts           {}", run.service_starts);
    println!("\nOracle:");
    println!("  records checked against replay   {}", changes.records);
    println!("  missions followed                {}", slots.missions);
    println!(
        "  due slots written / failed       {} / {}",
        slots.written, slots.failed
    );
    println!(
        "  poison set aside (intended)      {}",
        changes.dead_expected
    );
    let findings = [
        ("changes lost", changes.lost),
        ("changes applied twice", changes.applied_twice),
        ("slots duplicated", slots.duplicated),
        ("slots missed", slots.missed),
        ("slots left running", slots.left_running),
        ("runs off the slot chain", slots.off_chain),
        ("iterations lost", slots.iterations_lost),
        (
            "done slots without write-back",
            slots.done_without_writeback,
        ),
        ("unexpected dead changes", changes.dead_unexpected),
        ("poison not set aside", changes.poison_not_set_aside),
        ("change queue left", changes.queue_left.max(0) as u64),
        (
            "services not stopping on SIGTERM",
            u64::from(run.unclean_stops),
        ),
        ("changes only the backstop found", run.backstop_recoveries),
    ];
    let mut bad = 0;
    for (name, n) in findings {
        println!("  {name:<32} {n}");
        bad += n;
    }
    let details: Vec<&String> = changes.details.iter().chain(&slots.details).collect();
    if !details.is_empty() {
        println!("\nDetails (first 40 of {}):", details.len());
        for d in details.iter().take(40) {
            println!("  {d}");
        }
    }
    println!("\n{}", if bad == 0 { "PASSED" } else { "FAILED" });
    bad
}
