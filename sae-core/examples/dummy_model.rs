//! SAE Made Easy's DummyModel example in Rust: a `Linear(10, 10)` made hookable, a TopK SAE
//! (`k = 1`, 5 latents) injected at `"linear"`, a forward pass, save and load.
//!
//! Run with `cargo run -p sae-core --example dummy_model`.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};
use sae_core::{AdapterConfig, HookKind, HookPoint, HookedModule, Hooks, SaeConfig, TargetModules};

/// The model: one linear layer, hookable as `"linear"`.
#[derive(Module, Debug)]
pub struct DummyModel<B: Backend> {
    pub linear: Linear<B>,
}

impl<B: Backend> DummyModel<B> {
    /// A randomly initialised `Linear(10, 10)`.
    pub fn new(device: &B::Device) -> Self {
        DummyModel {
            linear: LinearConfig::new(10, 10).init(device),
        }
    }

    /// The model with torch-layout weights (`weight [out, in]`, `bias [out]`).
    pub fn from_torch(weight: Tensor<B, 2>, bias: Tensor<B, 1>) -> Self {
        let linear = Linear {
            weight: Param::from_tensor(weight.transpose()),
            bias: Some(Param::from_tensor(bias)),
        };
        DummyModel { linear }
    }
}

impl<B: Backend> HookedModule<B> for DummyModel<B> {
    type Input = Tensor<B, 3>;
    type Output = Tensor<B, 3>;

    fn hook_points(&self) -> Vec<HookPoint> {
        vec![HookPoint::linear("linear", 10, 10, HookKind::Other)]
    }

    fn forward_hooked(&self, x: Tensor<B, 3>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        hooks.call("linear", self.linear.forward(x))
    }
}

#[allow(dead_code)] // the tests include this file for `DummyModel` only
fn main() -> sae_core::Result<()> {
    type B = burn::backend::Flex;
    let device = Default::default();
    let config = AdapterConfig {
        sae: SaeConfig::topk(1, 5),
        target_modules: TargetModules::Names(vec!["linear".into()]),
    };
    let model = sae_core::inject::<B, _>(DummyModel::new(&device), config, &device)?;
    let x = Tensor::<B, 3>::random([2, 16, 10], burn::tensor::Distribution::Default, &device);
    let out = model.forward(x.clone())?.output;
    println!("output with the SAE: {:?}", out.dims());

    let dir = std::env::temp_dir().join("sae-dummy-model-example");
    model.save_pretrained(&dir)?;
    println!("saved to {}", dir.display());
    let loaded = sae_core::SaeModel::<B, _>::from_pretrained(model.model().clone(), &dir, &device)?;
    let again = loaded.forward(x)?.output;
    let same = again.equal(out).all().into_scalar();
    println!("the reloaded SAE gives the same output: {same}");
    Ok(())
}
