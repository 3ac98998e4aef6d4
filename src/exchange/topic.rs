//! Topic matching: words split on `.`, `*` matches exactly one word, `#`
//! matches zero or more words.

/// A binding key split into words once, at bind time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Vec<String>);

impl Pattern {
    pub fn new(key: &str) -> Self {
        // As in RabbitMQ, an empty key has no words (not one empty word).
        if key.is_empty() {
            return Pattern(Vec::new());
        }
        Pattern(key.split('.').map(str::to_string).collect())
    }

    pub fn matches(&self, routing_key: &[u8]) -> bool {
        let words: Vec<&[u8]> =
            if routing_key.is_empty() { Vec::new() } else { routing_key.split(|b| *b == b'.').collect() };
        matches_words(&self.0, &words)
    }
}

fn matches_words(pattern: &[String], words: &[&[u8]]) -> bool {
    // Iterative matching with backtracking on the last `#`, linear in practice.
    let (mut p, mut w) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None; // (pattern index after '#', word index)
    loop {
        if p < pattern.len() && pattern[p] == "#" {
            star = Some((p + 1, w));
            p += 1;
            continue;
        }
        if w == words.len() && p == pattern.len() {
            return true;
        }
        if w < words.len() && p < pattern.len() && (pattern[p] == "*" || pattern[p].as_bytes() == words[w]) {
            p += 1;
            w += 1;
            continue;
        }
        match star {
            Some((sp, sw)) if sw < words.len() => {
                star = Some((sp, sw + 1));
                p = sp;
                w = sw + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, k: &str) -> bool {
        Pattern::new(p).matches(k.as_bytes())
    }

    #[test]
    fn rabbitmq_topic_cases() {
        assert!(m("a.b.c", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(m("a.*.c", "a.x.c"));
        assert!(!m("a.*.c", "a.c"));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(m("#", ""));
        assert!(m("#", "a.b"));
        assert!(m("#.c", "a.b.c"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.b.b.c"));
        assert!(!m("a.#.c", "a.b.b.d"));
        assert!(m("*.#", "a"));
        assert!(!m("*", ""));
        assert!(m("", ""));
        assert!(m("#.#", "a.b"));
        assert!(m("*.*.#", "a.b"));
        assert!(!m("*.*.#", "a"));
        assert!(m("a.#.#.b", "a.b"));
    }
}
