//! Test-only: a seeded, deterministic simulation of the guard watching a rollout.
//!
//! [`Rng`] is splitmix64 with Bernoulli, normal (Box–Muller) and lognormal draws; [`Alias`]
//! samples any finite distribution with one draw (Walker/Vose), which [`Binomials`] uses for
//! binomial counts. `engine` runs holds fast; `literal` runs them one request at a time, to
//! check `engine` against; `targets` asserts the figures; `users` runs holds user by user,
//! with busy users beside light ones.

mod engine;
mod literal;
mod model;
mod targets;
mod users;

/// splitmix64 (Steele, Lea, Flood 2014): one u64 of state, passes BigCrush, cheap even in a
/// debug build.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for stream `stream` of experiment `seed`; different pairs give unrelated
    /// sequences.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut mix = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        mix.next_u64();
        Rng(mix.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A standard normal draw by Box–Muller (one of the pair; the other is dropped).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A lognormal draw: exp(mu + sigma·N(0, 1)).
    pub fn lognormal(&mut self, mu: f64, sigma: f64) -> f64 {
        (mu + sigma * self.normal()).exp()
    }
}

/// Walker's alias table (Vose's construction): draws index i with probability weights[i]/sum
/// using one random u64: the high half picks a column, the low half flips its biased coin.
#[derive(Clone, Debug)]
pub struct Alias {
    keep: Box<[u64]>,
    alias: Box<[usize]>,
}

impl Alias {
    /// A table for non-negative `weights` (not all zero).
    pub fn new(weights: &[f64]) -> Alias {
        let n = weights.len();
        let sum: f64 = weights.iter().sum();
        assert!(n > 0 && sum > 0.0, "alias table needs positive weight");
        let mut scaled: Vec<f64> = weights.iter().map(|w| w / sum * n as f64).collect();
        let mut keep = vec![1u64 << 32; n];
        let mut alias: Vec<usize> = (0..n).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = (scaled[s] * (1u64 << 32) as f64) as u64;
            alias[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Alias {
            keep: keep.into(),
            alias: alias.into(),
        }
    }

    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let x = rng.next_u64();
        let column = (((x >> 32) * self.keep.len() as u64) >> 32) as usize;
        if x & 0xFFFF_FFFF < self.keep[column] {
            column
        } else {
            self.alias[column]
        }
    }
}

/// Binomial(k, p) draws for every k up to a fixed most, one alias table per k.
#[derive(Clone, Debug)]
pub struct Binomials {
    tables: Box<[Alias]>,
}

impl Binomials {
    /// Tables for Binomial(k, p), k = 0..=most.
    pub fn new(p: f64, most: usize) -> Binomials {
        let tables = (0..=most)
            .map(|k| Alias::new(&binomial_pmf(k, p)))
            .collect();
        Binomials { tables }
    }

    /// One Binomial(k, p) draw; k must be at most the table's `most`.
    pub fn sample(&self, k: usize, rng: &mut Rng) -> u64 {
        self.tables[k].sample(rng) as u64
    }
}

/// P(X = j) for X ~ Binomial(k, p), j = 0..=k.
fn binomial_pmf(k: usize, p: f64) -> Vec<f64> {
    let p = p.clamp(0.0, 1.0);
    let mut choose = 1.0; // C(k, j), exact in f64 for k ≤ 50
    (0..=k)
        .map(|j| {
            if j > 0 {
                choose = choose * (k + 1 - j) as f64 / j as f64;
            }
            choose * p.powi(j as i32) * (1.0 - p).powi((k - j) as i32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_the_right_moments() {
        let mut rng = Rng::new(7, 0);
        let n = 200_000;
        let mut sum = 0.0;
        let mut sq = 0.0;
        let mut hits = 0;
        for _ in 0..n {
            let z = rng.normal();
            sum += z;
            sq += z * z;
            hits += usize::from(rng.bernoulli(0.1));
        }
        let mean = sum / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!(
            (sq / n as f64 - 1.0).abs() < 0.01,
            "variance {}",
            sq / n as f64
        );
        assert!(
            (hits as f64 / n as f64 - 0.1).abs() < 0.002,
            "bernoulli {hits}"
        );
    }

    #[test]
    fn binomial_tables_match_sums_of_bernoullis() {
        let table = Binomials::new(0.06, 50);
        let mut rng = Rng::new(11, 0);
        let runs = 100_000;
        for k in [0usize, 1, 7, 50] {
            let mut sum = 0u64;
            let mut sq = 0u64;
            for _ in 0..runs {
                let x = table.sample(k, &mut rng);
                assert!(x <= k as u64);
                sum += x;
                sq += x * x;
            }
            let mean = sum as f64 / runs as f64;
            let var = sq as f64 / runs as f64 - mean * mean;
            let (want_mean, want_var) = (k as f64 * 0.06, k as f64 * 0.06 * 0.94);
            assert!(
                (mean - want_mean).abs() < 0.02 + 0.01 * want_mean,
                "k {k}: mean {mean}"
            );
            assert!(
                (var - want_var).abs() < 0.02 + 0.03 * want_var,
                "k {k}: var {var}"
            );
        }
        let pmf = binomial_pmf(50, 0.5);
        assert!((pmf.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(binomial_pmf(3, 0.0), vec![1.0, 0.0, 0.0, 0.0]);
    }
}
