//! The batch path: bulk CSV dumps found, validated and loaded into the warehouse exactly once.
