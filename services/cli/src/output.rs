//! Human tables (the default) or JSON (`--output json`) for scripts.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and sentences for people.
    Table,
    /// One JSON document per command, for scripts.
    Json,
}

/// Prints `table` in the house style.
pub fn print_table(mut table: Table) {
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    println!("{table}");
}

/// A table of `rows` under `header`.
pub fn table<const N: usize>(header: [&str; N], rows: Vec<[String; N]>) -> Table {
    let mut t = Table::new();
    t.set_header(header);
    for r in rows {
        t.add_row(r);
    }
    t
}
