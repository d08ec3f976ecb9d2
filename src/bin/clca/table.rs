//! Aligned text tables and number formatting for the commands' output.
use std::time::Duration;

enum Row {
    Cells(Vec<String>),
    Rule,
}

/// A plain aligned text table: a header, a rule, then rows (and optional rules between them).
pub struct Table {
    head: Vec<String>,
    /// Right-align the column (numbers).
    right: Vec<bool>,
    rows: Vec<Row>,
}

impl Table {
    /// Columns as (header, right-aligned).
    pub fn new(cols: &[(&str, bool)]) -> Self {
        Table {
            head: cols.iter().map(|c| c.0.to_string()).collect(),
            right: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(Row::Cells(cells));
    }

    /// A horizontal rule under the previous row.
    pub fn rule(&mut self) {
        self.rows.push(Row::Rule);
    }

    /// The table as lines, each indented by two spaces, without trailing blanks.
    pub fn render(&self) -> Vec<String> {
        let mut w: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            if let Row::Cells(r) = r {
                for (i, c) in r.iter().enumerate() {
                    if let Some(wi) = w.get_mut(i) {
                        *wi = (*wi).max(c.chars().count());
                    }
                }
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut s = String::new();
            for (i, c) in cells.enumerate() {
                let (wi, right) = (
                    w.get(i).copied().unwrap_or(0),
                    self.right.get(i).copied().unwrap_or(false),
                );
                let pad = " ".repeat(wi.saturating_sub(c.chars().count()));
                if i > 0 {
                    s.push_str("  ");
                }
                if right {
                    s.push_str(&pad);
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&pad);
                }
            }
            format!("  {}", s.trim_end())
        };
        let rule: Vec<String> = w.iter().map(|&n| "-".repeat(n)).collect();
        let mut out = vec![
            line(&mut self.head.iter().map(String::as_str)),
            line(&mut rule.iter().map(String::as_str)),
        ];
        for r in &self.rows {
            out.push(match r {
                Row::Cells(r) => line(&mut r.iter().map(String::as_str)),
                Row::Rule => line(&mut rule.iter().map(String::as_str)),
            });
        }
        out
    }

    pub fn print(&self) {
        for l in self.render() {
            println!("{l}");
        }
    }
}

/// "1.23 s", "45.6 ms", "789.0 µs".
pub fn fmt_time(d: Duration) -> String {
    fmt_secs(d.as_secs_f64())
}

/// As [`fmt_time`], from seconds.
pub fn fmt_secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// MACs in G with `digits` decimals ("25.17").
pub fn gmacs(m: u64, digits: usize) -> String {
    format!("{:.*}", digits, m as f64 / 1e9)
}

/// "[2, 3, 64, 64]".
pub fn shape(dims: &[usize]) -> String {
    let d: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("[{}]", d.join(", "))
}

/// A section title.
pub fn section(title: &str) {
    println!();
    println!("== {title} ==");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&[("a", false), ("num", true)]);
        t.row(vec!["long".into(), "1".into()]);
        t.rule();
        t.row(vec!["x".into(), "12345".into()]);
        let r = t.render();
        assert_eq!(r[0], "  a       num");
        assert_eq!(r[1], "  ----  -----");
        assert_eq!(r[2], "  long      1");
        assert_eq!(r[3], "  ----  -----");
        assert_eq!(r[4], "  x     12345");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_secs(2.5), "2.50 s");
        assert_eq!(fmt_secs(0.0125), "12.50 ms");
        assert_eq!(fmt_secs(2.5e-5), "25.0 µs");
        assert_eq!(gmacs(25_170_000_000, 2), "25.17");
        assert_eq!(shape(&[2, 3]), "[2, 3]");
    }
}
