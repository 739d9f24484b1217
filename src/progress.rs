//! Feedback on long work: bars and spinners on a terminal's stderr, nothing in logs (indicatif
//! draws only when stderr is a terminal).

use std::time::Duration;

/// A spinner with a message and the time elapsed, ticking on its own until finished.
pub fn spinner(msg: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
