//! Sizes from `config.json` and flags, with checked arithmetic: a release build has no
//! overflow checks, so a product such as `num_hidden_layers × hidden_size × intermediate_size`
//! must not wrap silently into a small number (debug builds would panic). Every size a model is
//! built from is bounded here, when the config is parsed, so later products cannot overflow.

/// More parameters than any model this crate can hold on a machine: a config beyond it has a
/// wrong size (2^42 ≈ 4.4e12 parameters, 17.6 TB as f32).
pub const MAX_PARAMETERS: u64 = 1 << 42;
/// More decoder layers than any published model has by two orders of magnitude; bounds the
/// per-layer lists (module paths, tensor names) built from the config.
pub const MAX_LAYERS: usize = 1 << 16;

/// `Σ Π factors` over `terms`, each product and sum checked against [`MAX_PARAMETERS`]; the
/// error names the settings of the term that overflowed (`num_hidden_layers × hidden_size × ...`).
pub fn parameters(terms: &[&[(&str, usize)]]) -> Result<u64, String> {
    let mut total: u64 = 0;
    for factors in terms {
        let too_big = || {
            let named: Vec<String> = factors.iter().map(|(k, v)| format!("{k} ({v})")).collect();
            format!(
                "the sizes {} give more than {MAX_PARAMETERS} parameters; is one of them wrong?",
                named.join(" × ")
            )
        };
        let mut product: u64 = 1;
        for (_, v) in factors.iter() {
            product = u64::try_from(*v)
                .ok()
                .and_then(|v| product.checked_mul(v))
                .filter(|&p| p <= MAX_PARAMETERS)
                .ok_or_else(too_big)?;
        }
        total = total
            .checked_add(product)
            .filter(|&t| t <= MAX_PARAMETERS)
            .ok_or_else(too_big)?;
    }
    Ok(total)
}

/// Refuses a layer count beyond [`MAX_LAYERS`], naming the key.
pub fn layers(key: &str, n: usize) -> Result<(), String> {
    if n > MAX_LAYERS {
        return Err(format!(
            "`{key}` = {n} is more than {MAX_LAYERS} layers; is it wrong?"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflowing_product_is_an_error_naming_its_factors() {
        let err = parameters(&[&[("hidden_size", usize::MAX), ("vocab_size", 2)]]).unwrap_err();
        assert!(
            err.contains("hidden_size") && err.contains("vocab_size"),
            "{err}"
        );
        let err = parameters(&[
            &[("a", 1 << 40)],
            &[("b", 1 << 40)],
            &[("c", (1 << 41) + 1)],
        ])
        .unwrap_err();
        assert!(err.contains("c (2199023255553)"), "{err}");
        assert_eq!(parameters(&[&[("a", 3), ("b", 4)], &[("c", 5)]]), Ok(17));
    }
}
