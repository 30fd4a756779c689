//! Outbreak visualId masks (`godata-api.md` §3.3): `9` is the one run of
//! auto-sequence digits, `0` any digit, `@` a letter, `&` any character,
//! `YYYY` a year, `*` any string. A visualId sent for a mask with `9`s has
//! its sequence digits replaced by the next free number.

use regex::Regex;

/// A compiled mask.
#[derive(Debug, Clone)]
pub struct Mask {
    /// Anchored pattern; the `9` run (if any) is capture group 1.
    pattern: Regex,
    /// Width of the `9` run; 0 when the mask has none.
    seq_width: usize,
}

impl Mask {
    pub fn new(mask: &str) -> Option<Mask> {
        let mut re = String::from("^");
        let chars: Vec<char> = mask.chars().collect();
        let mut i = 0;
        let mut seq_width = 0;
        let mut seen_run = false;
        while i < chars.len() {
            let c = chars[i];
            if c == '9' {
                if seen_run {
                    return None; // only one contiguous run of 9s is allowed
                }
                let start = i;
                while i < chars.len() && chars[i] == '9' {
                    i += 1;
                }
                seq_width = i - start;
                seen_run = true;
                re.push_str(&format!("(\\d{{{seq_width}}})"));
                continue;
            }
            if mask[char_offset(&chars, i)..].starts_with("YYYY") {
                re.push_str("\\d{4}");
                i += 4;
                continue;
            }
            match c {
                '(' | ')' => return None,
                '0' => re.push_str("\\d"),
                '@' => re.push_str("[A-Za-z]"),
                '&' => re.push('.'),
                '*' => re.push_str(".*"),
                other => re.push_str(&regex::escape(&other.to_string())),
            }
            i += 1;
        }
        re.push('$');
        Some(Mask {
            pattern: Regex::new(&re).ok()?,
            seq_width,
        })
    }

    pub fn matches(&self, visual_id: &str) -> bool {
        self.pattern.is_match(visual_id)
    }

    /// The sequence number in `visual_id`, when it matches and has one.
    pub fn sequence_of(&self, visual_id: &str) -> Option<u64> {
        if self.seq_width == 0 {
            return None;
        }
        self.pattern
            .captures(visual_id)?
            .get(1)?
            .as_str()
            .parse()
            .ok()
    }

    /// Does `candidate` have the same non-sequence parts as `template`?
    pub fn same_family(&self, template: &str, candidate: &str) -> bool {
        match (
            self.pattern.captures(template),
            self.pattern.captures(candidate),
        ) {
            (Some(t), Some(c)) => match (t.get(1), c.get(1)) {
                (Some(tr), Some(cr)) => {
                    template[..tr.start()] == candidate[..cr.start()]
                        && template[tr.end()..] == candidate[cr.end()..]
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Replaces the sequence digits of `visual_id` with `index`, zero-padded;
    /// a mask without `9`s keeps the value as sent.
    pub fn resolve(&self, visual_id: &str, index: u64) -> String {
        if self.seq_width == 0 {
            return visual_id.to_string();
        }
        let Some(run) = self.pattern.captures(visual_id).and_then(|c| c.get(1)) else {
            return visual_id.to_string();
        };
        format!(
            "{}{:0width$}{}",
            &visual_id[..run.start()],
            index,
            &visual_id[run.end()..],
            width = self.seq_width
        )
    }

    pub fn has_sequence(&self) -> bool {
        self.seq_width > 0
    }
}

fn char_offset(chars: &[char], i: usize) -> usize {
    chars[..i].iter().map(|c| c.len_utf8()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_masks() {
        let m = Mask::new("CA-9999999999").unwrap();
        assert!(m.matches("CA-0000000100"));
        assert!(!m.matches("CB-0000000100"));
        assert!(!m.matches("CA-12"));
        assert_eq!(m.resolve("CA-0000000100", 7), "CA-0000000007");
        assert_eq!(m.sequence_of("CA-0000000042"), Some(42));
        let s = Mask::new("@@@-999999999").unwrap();
        assert_eq!(s.resolve("SEN-021929192", 3), "SEN-000000003");
        assert!(s.same_family("SEN-021929192", "SEN-000000001"));
        assert!(!s.same_family("SEN-021929192", "ABC-000000001"));
    }

    #[test]
    fn free_masks() {
        let m = Mask::new("*").unwrap();
        assert!(m.matches("HMIS-123"));
        assert_eq!(m.resolve("HMIS-123", 9), "HMIS-123");
        assert!(Mask::new("CA-99-99").is_none());
        let y = Mask::new("CASE-YYYY-&&").unwrap();
        assert!(y.matches("CASE-2024-x1"));
    }
}
