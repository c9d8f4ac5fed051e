//! Exact division by a number fixed when a quota is built: two
//! multiplications instead of a division instruction, which takes from 15
//! to 90 cycles depending on the CPU and sits on every decision's path.

/// Divides by `d` (at least 1) with its reciprocal `ceil(2^128 / d)`:
/// `floor(n / d) = floor(n × ceil(2^128 / d) / 2^128)` for every `u64` `n`
/// (Lemire, Kaser and Kurz, "Faster remainder by direct computation", 2019).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Divisor {
    d: u64,
    /// The reciprocal's high and low words (zero for `d = 1`, whose
    /// reciprocal `2^128` does not fit).
    hi: u64,
    lo: u64,
}

/// Shows the divisor only (it is what a `Quota`'s `Debug` output needs).
impl std::fmt::Debug for Divisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.d.fmt(f)
    }
}

impl Divisor {
    /// A divisor of `d`, which must be at least 1 (0 is taken as 1).
    pub(crate) const fn new(d: u64) -> Divisor {
        // Quotas never pass 0 (`Rate` refuses a zero limit or period).
        debug_assert!(d != 0, "a divisor of 0");
        let d = if d == 0 { 1 } else { d };
        // ceil(2^128 / d) = floor((2^128 - 1) / d) + 1 for d ≥ 2.
        let m = if d == 1 { 0 } else { u128::MAX / d as u128 + 1 };
        Divisor {
            d,
            hi: (m >> 64) as u64,
            lo: m as u64,
        }
    }

    /// The divisor.
    #[inline]
    pub(crate) const fn get(&self) -> u64 {
        self.d
    }

    /// `n / d`, rounded down.
    #[inline]
    pub(crate) fn div(&self, n: u64) -> u64 {
        if self.d == 1 {
            return n;
        }
        let n = u128::from(n);
        // High 128 bits of the 192-bit product m × n, then its top 64 bits.
        let low = (u128::from(self.lo) * n) >> 64;
        let high = u128::from(self.hi) * n;
        ((high + low) >> 64) as u64
    }

    /// `n / d`, rounded up.
    #[inline]
    pub(crate) fn div_ceil(&self, n: u64) -> u64 {
        let q = self.div(n);
        // q × d ≤ n: no overflow.
        q + u64::from(q * self.d != n)
    }

    /// `n % d`.
    #[inline]
    pub(crate) fn rem(&self, n: u64) -> u64 {
        n - self.div(n) * self.d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(n: u64, d: u64) {
        let divisor = Divisor::new(d);
        assert_eq!(divisor.div(n), n / d, "{n} / {d}");
        assert_eq!(divisor.div_ceil(n), n.div_ceil(d), "{n} / {d} rounded up");
        assert_eq!(divisor.rem(n), n % d, "{n} % {d}");
    }

    #[test]
    fn edges_divide_exactly() {
        let edges = [
            0,
            1,
            2,
            3,
            7,
            10,
            999_999,
            1_000_000,
            1_000_001,
            (1 << 32) - 1,
            1 << 32,
            (1 << 32) + 1,
            (1 << 62) + 12_345,
            (1 << 63) - 1,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ];
        for &d in &edges[1..] {
            for &n in &edges {
                check(n, d);
                check(n.wrapping_add(d), d);
                check(n.wrapping_sub(1), d);
            }
        }
    }

    #[test]
    fn debug_shows_the_divisor() {
        assert_eq!(format!("{:?}", Divisor::new(500_000)), "500000");
    }

    proptest! {
        #[test]
        fn divides_like_the_instruction(n: u64, d in 1u64..) {
            check(n, d);
        }

        #[test]
        fn divides_small_divisors_like_the_instruction(n: u64, d in 1u64..100_000) {
            check(n, d);
        }

        #[test]
        fn divides_multiples_and_neighbours(q in 0u64..1 << 32, d in 1u64..1 << 32, off in 0u64..3) {
            check((q * d).saturating_add(off).saturating_sub(1), d);
        }
    }
}
