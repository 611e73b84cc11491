//! Topic matching: words separated by `.`, `*` matches exactly one word and
//! `#` matches zero or more.

/// Whether routing key `key` matches binding `pattern`.
///
/// Without `#`, words are compared pairwise (no allocation: the common
/// case, once per binding per message). With `#`, one pass per pattern word
/// over the key's words (dynamic programming, O(pattern × key)): the
/// obvious backtracking is exponential, and a 255-octet binding of `#.#.…`
/// against a many-word key would hang the publishing connection forever.
pub fn matches(pattern: &str, key: &str) -> bool {
    if !pattern.split('.').any(|w| w == "#") {
        let (mut p, mut k) = (pattern.split('.'), key.split('.'));
        loop {
            match (p.next(), k.next()) {
                (None, None) => return true,
                (Some(w), Some(kw)) if w == "*" || w == kw => continue,
                _ => return false,
            }
        }
    }
    let k: Vec<&str> = key.split('.').collect();
    // dp[j]: the pattern words seen so far match the first j key words.
    let mut dp = vec![false; k.len() + 1];
    dp[0] = true;
    for w in pattern.split('.') {
        if w == "#" {
            // `#` takes zero or more words: j is reachable from any m <= j.
            let mut any = false;
            for d in dp.iter_mut() {
                any |= *d;
                *d = any;
            }
        } else {
            for j in (1..=k.len()).rev() {
                dp[j] = dp[j - 1] && (w == "*" || w == k[j - 1]);
            }
            dp[0] = false;
        }
    }
    dp[k.len()]
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

    /// The backtracking definition, as the reference.
    fn reference(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|n| reference(rest, &k[n..])),
            Some((&w, rest)) => match k.split_first() {
                Some((&kw, krest)) => (w == "*" || w == kw) && reference(rest, krest),
                None => false,
            },
        }
    }

    #[test]
    fn agrees_with_backtracking_on_every_small_case() {
        let words = ["a", "b", "*", "#", ""];
        let keys = ["a", "b", ""];
        let mut patterns = vec![String::new()];
        for _ in 0..4 {
            let mut next = vec![];
            for p in &patterns {
                for w in words {
                    next.push(if p.is_empty() { w.to_owned() } else { format!("{p}.{w}") });
                }
            }
            patterns.extend(next);
        }
        patterns.sort();
        patterns.dedup();
        let mut ks = vec![String::new()];
        for _ in 0..4 {
            let mut next = vec![];
            for k in &ks {
                for w in keys {
                    next.push(format!("{k}.{w}"));
                }
            }
            ks.extend(next);
        }
        for p in &patterns {
            for k in &ks {
                let pw: Vec<&str> = p.split('.').collect();
                let kw: Vec<&str> = k.split('.').collect();
                assert_eq!(matches(p, k), reference(&pw, &kw), "pattern {p:?} key {k:?}");
            }
        }
    }

    #[test]
    fn many_hashes_against_many_words_is_quick() {
        // 126 `#` and a word that never comes: exponential for backtracking.
        let pattern = format!("{}z", "#.".repeat(126));
        let key = vec!["a"; 127].join(".");
        assert!(!matches(&pattern, &key));
        assert!(matches(&pattern, &format!("{key}.z")));
    }
}
