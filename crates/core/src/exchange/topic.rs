//! Topic matching: words separated by `.`, `*` matches exactly one word and
//! `#` matches zero or more.

/// Whether routing key `key` matches binding `pattern`.
pub fn matches(pattern: &str, key: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    match_words(&p, &k)
}

fn match_words(p: &[&str], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((&"#", rest)) => {
            // `#` swallows 0..=len words; try the shortest first.
            (0..=k.len()).any(|n| match_words(rest, &k[n..]))
        }
        Some((&w, rest)) => match k.split_first() {
            Some((&kw, krest)) => (w == "*" || w == kw) && match_words(rest, krest),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn rabbitmq_tutorial_cases() {
        assert!(matches("*.orange.*", "quick.orange.rabbit"));
        assert!(matches("*.*.rabbit", "quick.orange.rabbit"));
        assert!(matches("lazy.#", "lazy.orange.male.rabbit"));
        assert!(matches("lazy.#", "lazy"));
        assert!(!matches("*.orange.*", "quick.orange.male.rabbit"));
        assert!(!matches("*.*.rabbit", "lazy.orange.elephant"));
        assert!(matches("#", ""));
        assert!(matches("#", "a.b.c"));
        assert!(matches("a.#.b", "a.b"));
        assert!(matches("a.#.b", "a.x.y.b"));
        assert!(!matches("a.*", "a"));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        assert!(matches("#.#", "a.b"));
    }
}
