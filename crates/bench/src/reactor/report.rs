//! Figures with their targets, percentiles, the plain-text table and JSON.

use std::time::Duration;

use serde_json::{json, Value};

/// What a figure is held to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    /// Reported for context: no target.
    Info,
}

#[derive(Debug, Clone)]
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Target,
}

impl Figure {
    pub fn verdict(&self) -> &'static str {
        match self.target {
            Target::AtMost(t) if self.value <= t => "PASS",
            Target::AtLeast(t) if self.value >= t => "PASS",
            Target::Info => "",
            _ => "MISS",
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::AtMost(t) => format!("<= {} {}", number(t), self.unit),
            Target::AtLeast(t) => format!(">= {} {}", number(t), self.unit),
            Target::Info => "-".into(),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Machine and server facts, in print order.
    pub facts: Vec<(String, String)>,
    pub figures: Vec<Figure>,
    /// Caveats worth reading next to the figures (clamping, failures).
    pub notes: Vec<String>,
}

impl Report {
    pub fn fact(&mut self, name: &str, value: impl ToString) {
        self.facts.push((name.to_string(), value.to_string()));
    }

    pub fn add(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Target,
    ) {
        let figure = Figure {
            section,
            name: name.into(),
            value,
            unit,
            target,
        };
        eprintln!(
            "[{section}] {}: {} {} {}",
            figure.name,
            number(value),
            unit,
            figure.verdict()
        );
        self.figures.push(figure);
    }

    /// Adds p50/p90/p99/max of a latency sample in milliseconds.
    pub fn latencies(
        &mut self,
        section: &'static str,
        what: &str,
        p: &Percentiles,
        targets: [Target; 4],
    ) {
        let values = [p.p50, p.p90, p.p99, p.max];
        for ((label, value), target) in ["p50", "p90", "p99", "max"].iter().zip(values).zip(targets)
        {
            self.add(section, format!("{what} {label}"), ms(value), "ms", target);
        }
    }

    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("note: {text}");
        self.notes.push(text);
    }

    pub fn print(&self) {
        println!();
        println!("mana-ai reactor benchmark");
        for (name, value) in &self.facts {
            println!("  {name:<22} {value}");
        }
        println!();
        println!(
            "{:<9} {:<52} {:>18} {:>22}  result",
            "section", "figure", "value", "target"
        );
        println!("{}", "-".repeat(112));
        let mut last = "";
        for f in &self.figures {
            if !last.is_empty() && last != f.section {
                println!();
            }
            last = f.section;
            println!(
                "{:<9} {:<52} {:>18} {:>22}  {}",
                f.section,
                f.name,
                format!("{} {}", number(f.value), f.unit),
                f.target_text(),
                f.verdict()
            );
        }
        let misses = self
            .figures
            .iter()
            .filter(|f| f.verdict() == "MISS")
            .count();
        let judged = self
            .figures
            .iter()
            .filter(|f| !matches!(f.target, Target::Info))
            .count();
        println!();
        println!("{} of {judged} targets met", judged - misses);
        if !self.notes.is_empty() {
            println!();
            println!("notes:");
            for n in &self.notes {
                println!("  - {n}");
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let facts: serde_json::Map<String, Value> = self
            .facts
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                let (kind, bound) = match f.target {
                    Target::AtMost(t) => ("at_most", Some(t)),
                    Target::AtLeast(t) => ("at_least", Some(t)),
                    Target::Info => ("info", None),
                };
                json!({
                    "section": f.section,
                    "name": f.name,
                    "value": f.value,
                    "unit": f.unit,
                    "target": {"kind": kind, "value": bound},
                    "result": f.verdict(),
                })
            })
            .collect();
        json!({"machine": facts, "figures": figures, "notes": self.notes})
    }
}

/// Nearest-rank percentiles of a sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at =
        |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: samples[samples.len() - 1],
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Three significant decimals for small numbers, none for large ones.
fn number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
