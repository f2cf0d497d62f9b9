//! Results: JSON for machines, a Markdown table for people, plots via
//! bench/plot.py (matplotlib).

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub case: String,
    pub variant: String,
    pub metric: String,
    pub unit: String,
    /// One value per round.
    pub values: Vec<f64>,
    pub median: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub case: String,
    pub metric: String,
    /// variant / baseline, of medians.
    pub ratio: f64,
    pub variant: String,
    pub baseline: String,
    /// Whether higher is better for this metric.
    pub higher_is_better: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub command: String,
    pub date: String,
    pub machine: String,
    pub notes: Vec<String>,
    pub samples: Vec<Sample>,
    pub ratios: Vec<Ratio>,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The p-th percentile (0..=100) of unsorted values, nearest rank.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{} x {cpu}, kernel {}, load at start {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

pub fn now() -> String {
    let out = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Report {
    pub fn add(&mut self, case: &str, variant: &str, metric: &str, unit: &str, values: Vec<f64>) {
        let m = median(&values);
        self.samples.push(Sample {
            case: case.into(),
            variant: variant.into(),
            metric: metric.into(),
            unit: unit.into(),
            values,
            median: m,
        });
    }

    pub fn get(&self, case: &str, variant: &str, metric: &str) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| s.case == case && s.variant == variant && s.metric == metric)
    }

    /// Adds variant/baseline ratios for every metric both have.
    pub fn compute_ratios(
        &mut self,
        variant: &str,
        baseline: &str,
        higher_is_better: impl Fn(&str) -> bool,
    ) {
        let keys: Vec<(String, String)> = self
            .samples
            .iter()
            .filter(|s| s.variant == variant)
            .map(|s| (s.case.clone(), s.metric.clone()))
            .collect();
        for (case, metric) in keys {
            if let (Some(v), Some(b)) = (
                self.get(&case, variant, &metric),
                self.get(&case, baseline, &metric),
            ) {
                if b.median != 0.0 {
                    self.ratios.push(Ratio {
                        ratio: v.median / b.median,
                        case: case.clone(),
                        metric: metric.clone(),
                        variant: variant.into(),
                        baseline: baseline.into(),
                        higher_is_better: higher_is_better(&metric),
                    });
                }
            }
        }
    }

    pub fn markdown(&self) -> String {
        let mut o = format!(
            "## {}\n\n`{}`  \n{}, {}\n\n",
            self.name, self.command, self.date, self.machine
        );
        for n in &self.notes {
            o += &format!("- {n}\n");
        }
        if !self.notes.is_empty() {
            o += "\n";
        }
        o += "| case | metric | variant | median | rounds |\n|---|---|---|---:|---|\n";
        for s in &self.samples {
            let vals: Vec<String> = s.values.iter().map(|v| fmt(*v)).collect();
            o += &format!(
                "| {} | {} | {} | {} {} | {} |\n",
                s.case,
                s.metric,
                s.variant,
                fmt(s.median),
                s.unit,
                vals.join(", ")
            );
        }
        if !self.ratios.is_empty() {
            o += "\n| case | metric | ratio | better is |\n|---|---|---:|---|\n";
            for r in &self.ratios {
                o += &format!(
                    "| {} | {} | **{:.2}x** ({} / {}) | {} |\n",
                    r.case,
                    r.metric,
                    r.ratio,
                    r.variant,
                    r.baseline,
                    if r.higher_is_better {
                        "higher"
                    } else {
                        "lower"
                    }
                );
            }
        }
        o
    }

    /// Writes `<dir>/<stem>.json`, `.md`, and `.png` (when matplotlib is there).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&json, serde_json::to_vec_pretty(self)?).context("writing JSON")?;
        std::fs::write(dir.join(format!("{stem}.md")), self.markdown())?;
        let plot = Path::new(env!("CARGO_MANIFEST_DIR")).join("plot.py");
        let png = dir.join(format!("{stem}.png"));
        // Debian's python3 has python3-matplotlib (install-deps.sh); a python3
        // earlier on PATH (pyenv, venvs) may not.
        let python = ["/usr/bin/python3", "python3"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("python3");
        match std::process::Command::new(python)
            .arg(&plot)
            .arg(&json)
            .arg(&png)
            .status()
        {
            Ok(s) if s.success() => {}
            _ => eprintln!(
                "(no plot: python3 with matplotlib is needed for {})",
                png.display()
            ),
        }
        eprintln!("wrote {}.{{json,md,png}}", dir.join(stem).display());
        Ok(())
    }
}

pub fn fmt(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
