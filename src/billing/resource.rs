//! Billable resources and the units their quantities and prices are counted in. Kept apart
//! from the wire enum so that billing never sees prost types.

use std::fmt;

use rust_decimal::Decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    GpuShared,
    GpuExclusive,
    Storage,
    Traffic,
    RequestPut,
    RequestGet,
}

impl Resource {
    pub const ALL: [Resource; 6] = [
        Resource::GpuShared,
        Resource::GpuExclusive,
        Resource::Storage,
        Resource::Traffic,
        Resource::RequestPut,
        Resource::RequestGet,
    ];

    /// The name used in catalogs, logs and the wire enum.
    pub fn name(self) -> &'static str {
        match self {
            Resource::GpuShared => "GPU_SHARED",
            Resource::GpuExclusive => "GPU_EXCLUSIVE",
            Resource::Storage => "STORAGE",
            Resource::Traffic => "TRAFFIC",
            Resource::RequestPut => "REQUEST_PUT",
            Resource::RequestGet => "REQUEST_GET",
        }
    }

    pub fn from_name(s: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The unit a catalog price of this resource is quoted per.
    pub fn price_unit(self) -> PriceUnit {
        match self {
            Resource::GpuShared => PriceUnit::Second,
            Resource::GpuExclusive => PriceUnit::Hour,
            Resource::Storage => PriceUnit::GbMonth,
            Resource::Traffic => PriceUnit::Gb,
            Resource::RequestPut | Resource::RequestGet => PriceUnit::TenThousand,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The unit a price is quoted per (GetCatalog `unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceUnit {
    /// GPU-second; quantities are milliseconds.
    Second,
    /// Hour of an instance; quantities are milliseconds.
    Hour,
    /// GB (10^9 bytes) stored for a month; reported as levels, not quantities.
    GbMonth,
    /// GB (10^9 bytes) transferred; quantities are bytes.
    Gb,
    /// 10,000 requests; quantities are request counts.
    TenThousand,
}

impl PriceUnit {
    pub fn name(self) -> &'static str {
        match self {
            PriceUnit::Second => "second",
            PriceUnit::Hour => "hour",
            PriceUnit::GbMonth => "GB_month",
            PriceUnit::Gb => "GB",
            PriceUnit::TenThousand => "10k",
        }
    }

    /// How many quantity units (ms, bytes, requests) make one price unit. None for
    /// GB-month, which is integrated over time rather than counted.
    pub fn quantity_per_unit(self) -> Option<Decimal> {
        match self {
            PriceUnit::Second => Some(Decimal::from(1_000)),
            PriceUnit::Hour => Some(Decimal::from(3_600_000)),
            PriceUnit::Gb => Some(Decimal::from(1_000_000_000)),
            PriceUnit::TenThousand => Some(Decimal::from(10_000)),
            PriceUnit::GbMonth => None,
        }
    }
}

/// A set of resources, e.g. what a grant pays for. Empty means nothing; use `ANY` for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ResourceSet(u8);

impl ResourceSet {
    pub const EMPTY: ResourceSet = ResourceSet(0);
    pub const ANY: ResourceSet = ResourceSet(0b11_1111);
    /// GPU time of either edition: what a computing-power plan pays for.
    pub const COMPUTE: ResourceSet = ResourceSet(0b11);

    pub fn of(r: Resource) -> Self {
        ResourceSet(r.bit())
    }

    pub fn with(self, r: Resource) -> Self {
        ResourceSet(self.0 | r.bit())
    }

    pub fn contains(self, r: Resource) -> bool {
        self.0 & r.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn is_any(self) -> bool {
        self == Self::ANY
    }

    pub fn iter(self) -> impl Iterator<Item = Resource> {
        Resource::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The one resource in the set, if it holds exactly one.
    pub fn single(self) -> Option<Resource> {
        let mut it = self.iter();
        match (it.next(), it.next()) {
            (Some(r), None) => Some(r),
            _ => None,
        }
    }

    /// Bit pattern for storage; `from_bits` is its inverse.
    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> Self {
        ResourceSet(bits & Self::ANY.0)
    }
}

impl FromIterator<Resource> for ResourceSet {
    fn from_iter<I: IntoIterator<Item = Resource>>(iter: I) -> Self {
        iter.into_iter().fold(ResourceSet::EMPTY, ResourceSet::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Resource::ALL {
            assert_eq!(Resource::from_name(r.name()), Some(r));
        }
        assert_eq!(Resource::from_name("GPU"), None);
    }

    #[test]
    fn sets() {
        assert!(ResourceSet::COMPUTE.contains(Resource::GpuShared));
        assert!(ResourceSet::COMPUTE.contains(Resource::GpuExclusive));
        assert!(!ResourceSet::COMPUTE.contains(Resource::Storage));
        assert_eq!(ResourceSet::ANY.iter().count(), 6);
        assert_eq!(
            ResourceSet::of(Resource::Traffic).single(),
            Some(Resource::Traffic)
        );
        assert_eq!(ResourceSet::COMPUTE.single(), None);
        assert_eq!(
            ResourceSet::from_bits(ResourceSet::COMPUTE.bits()),
            ResourceSet::COMPUTE
        );
    }
}
