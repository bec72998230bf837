//! A progress bar over rows, shared by the examples for their passes over the data
//! (evaluation, encoding, reconstruction), which take minutes on a large corpus.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `rows` rows, labelled `what`; hidden when `quiet` (and, as every indicatif
/// bar, when stderr is not a terminal).
pub fn rows_bar(what: &str, rows: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(rows as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} rows {{elapsed_precise}} eta {{eta}}"
        ))
        .expect("valid template"),
    );
    bar
}
