//! Wording of messages shared by several commands.

/// "1 epoch", "3 epochs".
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}
