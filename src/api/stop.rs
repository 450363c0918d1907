//! Stop strings over streamed text: text that could still become a stop string is held back,
//! so a streamed answer never shows the beginning of a stop string it then stops at.

/// Holds back generated text that could be the start of a stop string.
#[derive(Clone, Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    pending: String,
}

impl StopText {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> StopText {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Appends `piece`; returns the text safe to send and whether a stop string was found
    /// (the stop string and anything after it are dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending.get(..at).unwrap_or_default().to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a proper prefix of a stop string.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(stop.get(..i).unwrap_or_default()) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending.get(..cut).unwrap_or_default().to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The held-back text, at the end of a generation that did not stop on a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::StopText;

    #[test]
    fn holds_back_prefixes_and_cuts_at_the_first_stop() {
        let mut s = StopText::new(vec!["<|im_end|>".into(), "\n\n".into(), String::new()]);
        assert_eq!(s.push("Hello <|im"), ("Hello ".to_string(), false));
        assert_eq!(s.push("_en"), (String::new(), false));
        assert_eq!(s.push("d|> tail"), (String::new(), true));
        assert_eq!(s.push("a<b"), ("a<b".to_string(), false));
        assert_eq!(s.push("\n"), (String::new(), false));
        assert_eq!(s.push("x\n\ny<|im_end|>"), ("\nx".to_string(), true));
        assert_eq!(s.push("é<"), ("é".to_string(), false));
        assert_eq!(s.flush(), "<");
    }
}
