//! The markdown report: one row per figure, min / median / max over the runs.

use std::fmt::Write as _;

/// One measured figure.
pub struct Row {
    /// What was measured, with its unit.
    pub figure: String,
    /// Every run's value.
    pub runs: Vec<f64>,
    /// Decimal places shown.
    pub digits: usize,
    /// The target from the design brief, or `—`.
    pub target: String,
}

/// A report under construction: sections of rows and notes, printed as they come.
#[derive(Default)]
pub struct Report {
    header: Vec<String>,
    sections: Vec<(String, Vec<Row>, Vec<String>)>,
}

impl Report {
    /// A line of the header (machine, date, commit…).
    pub fn header(&mut self, line: String) {
        eprintln!("{line}");
        self.header.push(line);
    }

    /// Starts a section.
    pub fn section(&mut self, title: &str) {
        eprintln!("\n## {title}");
        self.sections
            .push((title.to_string(), Vec::new(), Vec::new()));
    }

    /// Adds a figure to the current section.
    pub fn row(&mut self, figure: impl Into<String>, runs: Vec<f64>, digits: usize, target: &str) {
        let row = Row {
            figure: figure.into(),
            runs,
            digits,
            target: target.to_string(),
        };
        eprintln!("{}", render_row(&row));
        self.current().1.push(row);
    }

    /// Adds a sentence under the current section's table.
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("  note: {note}");
        self.current().2.push(note);
    }

    fn current(&mut self) -> &mut (String, Vec<Row>, Vec<String>) {
        if self.sections.is_empty() {
            self.section("Figures");
        }
        self.sections.last_mut().expect("a section")
    }

    /// The whole report as markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# tocsin benchmark report\n\n");
        for line in &self.header {
            let _ = writeln!(out, "- {line}");
        }
        for (title, rows, notes) in &self.sections {
            let _ = writeln!(out, "\n## {title}\n");
            if !rows.is_empty() {
                out.push_str(
                    "| figure | min | median | max | target |\n| --- | --- | --- | --- | --- |\n",
                );
                for row in rows {
                    out.push_str(&render_row(row));
                    out.push('\n');
                }
            }
            if !notes.is_empty() {
                out.push('\n');
                for note in notes {
                    let _ = writeln!(out, "- {note}");
                }
            }
        }
        out
    }
}

fn render_row(row: &Row) -> String {
    if row.runs.is_empty() {
        return format!("| {} | — | — | — | {} |", row.figure, row.target);
    }
    let (min, med, max) = stats(&row.runs);
    let d = row.digits;
    format!(
        "| {} | {min:.d$} | {med:.d$} | {max:.d$} | {} |",
        row.figure, row.target
    )
}

/// (min, median, max).
pub fn stats(xs: &[f64]) -> (f64, f64, f64) {
    let mut xs = xs.to_vec();
    xs.sort_by(|a, b| a.total_cmp(b));
    (xs[0], xs[xs.len() / 2], xs[xs.len() - 1])
}

/// The `q` quantile (0–1) of latencies, by nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
