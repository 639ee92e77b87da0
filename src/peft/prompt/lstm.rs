//! The bidirectional LSTM of P-tuning's `lstm_head` (`torch.nn.LSTM(..., bidirectional=True,
//! batch_first=True)`), written out so its parameters keep PyTorch's names and gate order
//! (input, forget, cell, output). It runs over the virtual tokens once per forward, batch 1.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::Tensor;

use crate::models::linear::Linear;

/// One direction of one layer: `weight_ih_l{k}` [4h, in] + `bias_ih_l{k}`, `weight_hh_l{k}`
/// [4h, h] + `bias_hh_l{k}` (burn orientation inside the Linears).
#[derive(Module, Debug)]
pub struct LstmCell {
    pub ih: Linear,
    pub hh: Linear,
}

#[derive(Module, Debug)]
pub struct BiLstm {
    /// Per layer: forward direction, then `_reverse`.
    pub forward_cells: Vec<LstmCell>,
    pub reverse_cells: Vec<LstmCell>,
    /// Between layers (not after the last), as torch's `dropout` argument.
    pub dropout: Dropout,
}

impl LstmCell {
    /// x: [steps, in] -> hidden states [steps, h], run forwards or backwards in time.
    fn run(&self, x: Tensor<2>, reverse: bool) -> Tensor<2> {
        let [steps, _] = x.dims();
        let h4 = self.hh.out_features();
        let h = h4 / 4;
        let gates_x = self.ih.forward(x);
        let device = gates_x.device();
        let mut hidden: Tensor<2> = Tensor::zeros([1, h], &device);
        let mut cell: Tensor<2> = Tensor::zeros([1, h], &device);
        let mut out: Vec<Option<Tensor<2>>> = vec![None; steps];
        let order: Vec<usize> = if reverse {
            (0..steps).rev().collect()
        } else {
            (0..steps).collect()
        };
        for t in order {
            let g = gates_x.clone().slice([t..t + 1, 0..h4]) + self.hh.forward(hidden);
            let gate = |k: usize| g.clone().slice([0..1, k * h..(k + 1) * h]);
            let (i, f, c, o) = (
                sigmoid(gate(0)),
                sigmoid(gate(1)),
                tanh(gate(2)),
                sigmoid(gate(3)),
            );
            cell = f * cell + i * c;
            hidden = o * tanh(cell.clone());
            out[t] = Some(hidden.clone());
        }
        Tensor::cat(out.into_iter().flatten().collect(), 0)
    }
}

impl BiLstm {
    pub fn new(forward_cells: Vec<LstmCell>, reverse_cells: Vec<LstmCell>, dropout: f64) -> Self {
        Self {
            forward_cells,
            reverse_cells,
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// x: [steps, in] -> [steps, 2h] (forward and reverse hidden states concatenated).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let layers = self.forward_cells.len();
        let mut x = x;
        for (l, (fw, bw)) in self
            .forward_cells
            .iter()
            .zip(&self.reverse_cells)
            .enumerate()
        {
            x = Tensor::cat(vec![fw.run(x.clone(), false), bw.run(x, true)], 1);
            if l + 1 < layers {
                x = self.dropout.forward(x);
            }
        }
        x
    }
}
