//! The two pools by name, and one value per pool indexed by that name.

use std::ops::{Index, IndexMut};

/// One of the two upstream pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolName {
    Stable,
    Canary,
}

impl PoolName {
    pub const BOTH: [PoolName; 2] = [PoolName::Stable, PoolName::Canary];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolName::Stable => "stable",
            PoolName::Canary => "canary",
        }
    }
}

/// A value for each pool: `per_pool[PoolName::Canary]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PerPool<T> {
    pub stable: T,
    pub canary: T,
}

impl<T> PerPool<T> {
    /// Builds both values from the pool's name.
    pub fn from_fn(mut f: impl FnMut(PoolName) -> T) -> Self {
        PerPool {
            stable: f(PoolName::Stable),
            canary: f(PoolName::Canary),
        }
    }

    /// Each pool's name with its value.
    pub fn iter(&self) -> impl Iterator<Item = (PoolName, &T)> {
        [
            (PoolName::Stable, &self.stable),
            (PoolName::Canary, &self.canary),
        ]
        .into_iter()
    }
}

impl<T> Index<PoolName> for PerPool<T> {
    type Output = T;

    #[inline]
    fn index(&self, pool: PoolName) -> &T {
        match pool {
            PoolName::Stable => &self.stable,
            PoolName::Canary => &self.canary,
        }
    }
}

impl<T> IndexMut<PoolName> for PerPool<T> {
    #[inline]
    fn index_mut(&mut self, pool: PoolName) -> &mut T {
        match pool {
            PoolName::Stable => &mut self.stable,
            PoolName::Canary => &mut self.canary,
        }
    }
}
