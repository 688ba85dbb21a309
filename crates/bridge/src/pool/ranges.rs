//! Port ranges as configured (`--ports 11100-11199,12000`): parsing,
//! validation (bounds, order, overlap) and the errors that say how to fix them.

use std::fmt;
use std::str::FromStr;

/// One inclusive range of ports, `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range (inclusive).
    pub end: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn len(&self) -> usize {
        usize::from(self.end) - usize::from(self.start) + 1
    }

    /// Ranges are never empty once validated; kept for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A validated, sorted, non-overlapping, non-empty set of port ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRanges(Vec<PortRange>);

/// Why a set of port ranges was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Nothing was given.
    #[error("no port range given; write at least one range such as 11100-11199")]
    Empty,
    /// A range did not parse.
    #[error(
        "`{0}` is not a port range; write START-END (inclusive) or a single port, e.g. 11100-11199"
    )]
    Syntax(String),
    /// A port outside 1..=65535.
    #[error("`{0}` is outside 1-65535; ports must be between 1 and 65535")]
    OutOfBounds(String),
    /// START greater than END.
    #[error("range {start}-{end} is inverted; write it as {end}-{start}")]
    Inverted {
        /// The given start.
        start: u16,
        /// The given end.
        end: u16,
    },
    /// Two ranges share ports.
    #[error("ranges {0} and {1} overlap; merge them into one range or make them disjoint")]
    Overlap(PortRange, PortRange),
}

impl PortRanges {
    /// Validates ranges: each within 1..=65535, start <= end, none overlapping.
    pub fn new(mut ranges: Vec<PortRange>) -> Result<Self, RangeError> {
        if ranges.is_empty() {
            return Err(RangeError::Empty);
        }
        for r in &ranges {
            if r.start == 0 {
                return Err(RangeError::OutOfBounds(r.to_string()));
            }
            if r.start > r.end {
                return Err(RangeError::Inverted {
                    start: r.start,
                    end: r.end,
                });
            }
        }
        ranges.sort();
        for w in ranges.windows(2) {
            if w[1].start <= w[0].end {
                return Err(RangeError::Overlap(w[0], w[1]));
            }
        }
        Ok(Self(ranges))
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    /// Total number of ports.
    pub fn capacity(&self) -> usize {
        self.0.iter().map(PortRange::len).sum()
    }

    /// Whether `port` lies in one of the ranges.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    /// Whether every port of `self` is also in `other`.
    pub fn is_subset_of(&self, other: &PortRanges) -> bool {
        self.0
            .iter()
            .all(|r| other.0.iter().any(|o| o.start <= r.start && r.end <= o.end))
    }

    /// `[[start, end], ...]`, as the HTTP API shows them.
    pub fn as_pairs(&self) -> Vec<[u16; 2]> {
        self.0.iter().map(|r| [r.start, r.end]).collect()
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for PortRanges {
    type Err = RangeError;

    /// Parses `11100-11199[,12000-12049]`; a single port `N` means `N-N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |t: &str| -> Result<u16, RangeError> {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RangeError::Syntax(s.trim().to_string()));
            }
            match t.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                _ => Err(RangeError::OutOfBounds(t.to_string())),
            }
        };
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let p = port(part)?;
                    (p, p)
                }
            };
            out.push(PortRange { start: a, end: b });
        }
        Self::new(out)
    }
}
