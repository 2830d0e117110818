//! Where each decoder layer's weights live while a model runs: the plan the GPU runtime reads
//! at load ([`crate::gpu::GpuOptions::placement`]) and consults each step, through
//! its weight store, for layer `l`'s weights.
//!
//! Today only [`Residency::Resident`] is carried out (every weight loaded into GPU memory
//! once); a plan with any other residency is refused at load, naming the layer. The other
//! variants are the vocabulary layer streaming will implement: the plan, its validation and
//! the planner ([`Placement::fit`]) are already real so that callers can be written against
//! them.

use std::fmt;

/// Where one layer's weights live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Residency {
    /// Loaded into GPU memory once, at load, and kept there.
    Resident,
    /// Read into one of `slots` GPU buffers (shared by every streamed layer) shortly before its
    /// step uses it; `slots` bounds how many streamed layers are in GPU memory at once.
    Streamed {
        /// GPU buffers, each the size of the largest streamed layer; at least 1.
        slots: usize,
    },
    /// Kept in host memory (pinned, or the page cache) and copied to the GPU each step.
    Cached,
}

impl fmt::Display for Residency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Residency::Resident => f.write_str("resident"),
            Residency::Streamed { slots } => write!(f, "streamed through {slots} GPU slots"),
            Residency::Cached => f.write_str("cached in host memory"),
        }
    }
}

/// A placement plan for a model's decoder layers: one [`Residency`] for all of them, or one
/// per layer. [`Default`] is [`Placement::resident`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    plan: Plan,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    /// The same residency for every layer, whatever the model's layer count.
    Uniform(Residency),
    /// Layer `l`'s residency at index `l`; must have as many entries as the model has layers.
    PerLayer(Vec<Residency>),
}

impl Default for Placement {
    fn default() -> Placement {
        Placement::resident()
    }
}

/// A placement that does not fit the model, or that the runtime cannot carry out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlacementError {
    /// A per-layer plan for another model.
    #[error("the placement plan names {planned} layers but the model has {model}; give one residency per decoder layer")]
    LayerCount {
        /// Layers in the plan.
        planned: usize,
        /// Layers in the model.
        model: usize,
    },
    /// A streamed layer with no slot to stream through.
    #[error("layer {layer} is streamed through 0 GPU slots; stream through at least 1")]
    NoSlots {
        /// The layer.
        layer: usize,
    },
    /// A streamed plan whose slots alone do not fit the memory budget.
    #[error("streaming through {slots} slots of {slot_bytes} bytes needs more than the budget of {budget_bytes} bytes; give a larger budget or fewer slots")]
    SlotsExceedBudget {
        /// Slots asked for.
        slots: usize,
        /// Bytes of one slot (the largest layer).
        slot_bytes: u64,
        /// The budget.
        budget_bytes: u64,
    },
    /// A residency the runtime does not carry out yet.
    #[error("layer {layer} is placed {residency}, but the GPU runtime only runs resident layers so far (layer streaming is not implemented yet); place every layer resident (Placement::resident())")]
    NotImplemented {
        /// The first such layer.
        layer: usize,
        /// Its residency.
        residency: Residency,
    },
}

impl Placement {
    /// Every layer resident in GPU memory (today's behaviour).
    pub fn resident() -> Placement {
        Placement::uniform(Residency::Resident)
    }

    /// Every layer with the same residency.
    pub fn uniform(residency: Residency) -> Placement {
        Placement {
            plan: Plan::Uniform(residency),
        }
    }

    /// Layer `l` placed as `layers[l]`.
    pub fn per_layer(layers: Vec<Residency>) -> Placement {
        Placement {
            plan: Plan::PerLayer(layers),
        }
    }

    /// The planner: as many layers resident as fit in `budget_bytes` beside `slots` streaming
    /// slots (each the size of the largest streamed layer), the rest streamed; every layer
    /// resident when all of them fit. `layer_bytes[l]` is layer `l`'s weight bytes. Earlier
    /// layers are made resident first, so the streamed ones form one run at the end.
    pub fn fit(
        layer_bytes: &[u64],
        budget_bytes: u64,
        slots: usize,
    ) -> Result<Placement, PlacementError> {
        if layer_bytes.iter().sum::<u64>() <= budget_bytes {
            return Ok(Placement::resident());
        }
        if slots == 0 {
            return Err(PlacementError::NoSlots {
                layer: layer_bytes.len().saturating_sub(1),
            });
        }
        // Try k resident layers, most first: the slots hold the largest of the others.
        for resident in (0..layer_bytes.len()).rev() {
            let (kept, streamed) = layer_bytes.split_at(resident);
            let slot_bytes = streamed.iter().copied().max().unwrap_or(0);
            let needed = kept.iter().sum::<u64>() + slot_bytes * slots as u64;
            if needed <= budget_bytes {
                let mut layers = vec![Residency::Resident; resident];
                layers.resize(layer_bytes.len(), Residency::Streamed { slots });
                return Ok(Placement::per_layer(layers));
            }
        }
        Err(PlacementError::SlotsExceedBudget {
            slots,
            slot_bytes: layer_bytes.iter().copied().max().unwrap_or(0),
            budget_bytes,
        })
    }

    /// Checks the plan against a model of `num_layers` decoder layers and returns each layer's
    /// residency.
    pub fn resolve(&self, num_layers: usize) -> Result<Vec<Residency>, PlacementError> {
        let layers = match &self.plan {
            Plan::Uniform(r) => vec![*r; num_layers],
            Plan::PerLayer(v) if v.len() == num_layers => v.clone(),
            Plan::PerLayer(v) => {
                return Err(PlacementError::LayerCount {
                    planned: v.len(),
                    model: num_layers,
                })
            }
        };
        if let Some(layer) = layers
            .iter()
            .position(|r| matches!(r, Residency::Streamed { slots: 0 }))
        {
            return Err(PlacementError::NoSlots { layer });
        }
        Ok(layers)
    }

    /// Whether every layer is resident, whatever the model's layer count.
    pub fn is_all_resident(&self) -> bool {
        match &self.plan {
            Plan::Uniform(r) => *r == Residency::Resident,
            Plan::PerLayer(v) => v.iter().all(|r| *r == Residency::Resident),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAMED: Residency = Residency::Streamed { slots: 2 };

    #[test]
    fn default_is_all_resident_for_any_model() {
        let p = Placement::default();
        assert!(p.is_all_resident());
        assert_eq!(p.resolve(3), Ok(vec![Residency::Resident; 3]));
        assert_eq!(p.resolve(0), Ok(vec![]));
    }

    #[test]
    fn per_layer_plan_must_match_the_layer_count() {
        let p = Placement::per_layer(vec![Residency::Resident, STREAMED]);
        assert!(!p.is_all_resident());
        assert_eq!(p.resolve(2), Ok(vec![Residency::Resident, STREAMED]));
        let err = p.resolve(3).unwrap_err();
        assert_eq!(
            err,
            PlacementError::LayerCount {
                planned: 2,
                model: 3
            }
        );
        assert!(err
            .to_string()
            .contains("names 2 layers but the model has 3"));
    }

    #[test]
    fn zero_slots_are_refused_naming_the_layer() {
        let p = Placement::per_layer(vec![Residency::Resident, Residency::Streamed { slots: 0 }]);
        assert_eq!(p.resolve(2), Err(PlacementError::NoSlots { layer: 1 }));
        let u = Placement::uniform(Residency::Streamed { slots: 0 });
        assert_eq!(u.resolve(4), Err(PlacementError::NoSlots { layer: 0 }));
    }

    #[test]
    fn fit_keeps_everything_resident_when_it_fits() {
        assert_eq!(
            Placement::fit(&[10, 10, 10], 30, 2),
            Ok(Placement::resident())
        );
        assert_eq!(Placement::fit(&[], 0, 0), Ok(Placement::resident()));
    }

    #[test]
    fn fit_streams_the_tail_through_slots_of_the_largest_streamed_layer() {
        // 25 bytes: two resident layers (20) leave 5, too few for a slot of 10; one resident
        // (10) plus a slot of 10 fits.
        let one = Residency::Streamed { slots: 1 };
        let p = Placement::fit(&[10, 10, 10], 25, 1).unwrap();
        assert_eq!(p.resolve(3).unwrap(), vec![Residency::Resident, one, one]);
        // The slots are sized by the streamed layers only: a large first layer stays resident
        // beside two slots of 5 (40 + 10), where slots of 40 would not fit at all.
        let p = Placement::fit(&[40, 5, 5, 5], 52, 2).unwrap();
        assert_eq!(
            p.resolve(4).unwrap(),
            vec![Residency::Resident, STREAMED, STREAMED, STREAMED]
        );
        // Nothing resident: only the slots.
        let p = Placement::fit(&[10, 10], 15, 1).unwrap();
        assert_eq!(
            p.resolve(2).unwrap(),
            vec![Residency::Streamed { slots: 1 }; 2]
        );
    }

    #[test]
    fn fit_refuses_budgets_below_the_slots() {
        assert_eq!(
            Placement::fit(&[10, 10], 15, 2),
            Err(PlacementError::SlotsExceedBudget {
                slots: 2,
                slot_bytes: 10,
                budget_bytes: 15
            })
        );
        assert_eq!(
            Placement::fit(&[10, 10], 15, 0),
            Err(PlacementError::NoSlots { layer: 1 })
        );
    }

    #[test]
    fn residency_names_itself_in_messages() {
        let e = PlacementError::NotImplemented {
            layer: 7,
            residency: STREAMED,
        };
        let msg = e.to_string();
        assert!(
            msg.contains("layer 7 is placed streamed through 2 GPU slots"),
            "{msg}"
        );
        assert!(msg.contains("not implemented"), "{msg}");
    }
}
