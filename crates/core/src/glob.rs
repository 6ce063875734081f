//! Model-name patterns: `*` matches any run of characters, everything else matches itself
//! (case-insensitively, as model names are).

/// Whether `pattern` matches the whole of `text`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // Iterative wildcard match with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// An empty list allows everything; otherwise one pattern must match.
pub fn allowed(patterns: &[String], text: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| matches(p, text))
}

/// Checks a list of patterns given by a person.
pub fn validate_patterns(field: &'static str, patterns: &[String]) -> Result<(), crate::Error> {
    if patterns.len() > 256 {
        return Err(crate::Error::invalid(field, "at most 256 patterns"));
    }
    for p in patterns {
        if p.is_empty() || p.len() > 128 {
            return Err(crate::Error::invalid(
                field,
                format!("pattern {p:?} must be 1 to 128 characters"),
            ));
        }
        if p.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(crate::Error::invalid(
                field,
                format!("pattern {p:?} contains whitespace or control characters"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(matches("gpt-5*", "gpt-5.1-codex"));
        assert!(matches("*codex*", "GPT-5-Codex-mini"));
        assert!(matches("claude-*-4", "claude-opus-4"));
        assert!(!matches("gpt-4*", "gpt-5"));
        assert!(matches("*", ""));
        assert!(!matches("a", ""));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(allowed(&[], "anything"));
        assert!(!allowed(&["x".into()], "y"));
    }
}
