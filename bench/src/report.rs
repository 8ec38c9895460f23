//! Plain-text tables for the summaries the scenarios print, aligned for a terminal and
//! pasteable into Markdown.

/// A table with a header row; cells are strings.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|cell| (*cell).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Adds `other`'s rows (a table with the same columns).
    pub fn append(&mut self, other: &Table) {
        self.rows.extend(other.rows.iter().cloned());
    }

    /// The table as Markdown, each column as wide as its widest cell.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|cell| cell.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = (0..columns)
                .map(|n| {
                    let cell = cells.get(n).map_or("", String::as_str);
                    format!("{cell}{}", " ".repeat(widths[n].saturating_sub(cell.chars().count())))
                })
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
        let mut out = vec![line(&self.header), line(&rule)];
        out.extend(self.rows.iter().map(|row| line(row)));
        out.join("\n")
    }

    pub fn print(&self) {
        println!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_short_rows_are_padded() {
        let mut table = Table::new(&["a", "long header"]);
        table.row(vec!["wide cell".into(), "x".into()]);
        table.row(vec!["µ".into()]);
        let rendered = table.render();
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[0], "| a         | long header |");
        assert_eq!(lines[1], "| --------- | ----------- |");
        assert_eq!(lines[2], "| wide cell | x           |");
        assert_eq!(lines[3], "| µ         |             |");
    }
}
