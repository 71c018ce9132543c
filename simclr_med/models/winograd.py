"""Winograd convolution F(m×m, 3×3) (Lavin & Gray, 2016) for stride-1 SAME 3×3 convolutions.

A 3×3 convolution computes each m×m output tile from an α×α input tile (α = m + 2) with
α² multiplications per channel pair instead of 9m²: 2.25× fewer for m = 2, 4× for m = 4.
TensorFlow has no Winograd kernel on AVX2 CPUs (oneDNN's needs AVX-512), so this one is built
from matmuls, and pays off where channels are many and maps small (ResNet's later stages;
benchmarks/conv_kernels.py). Per tile, with the standard transform matrices B, G, A:

    V = Bᵀ d B        the input tile         (one matmul by the Kronecker product Bᵀ⊗Bᵀ)
    U = G g Gᵀ        the kernel
    M[ξ] = V[ξ] U[ξ]  one batched matmul over the α² positions ξ, contracting channels
    Y = Aᵀ M A        the output tile

The gradient is Winograd too: the input gradient is the same convolution of dy with the
flipped, transposed kernel, and the kernel gradient is Gᵀ (V[ξ]ᵀ (A dy Aᵀ)[ξ]) G.
float32 only: the F(4×4) transforms (constants up to 8 and 1/24) cost fp16/bf16 too much precision.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

# (Bᵀ, G, Aᵀ) for F(m, 3); interpolation points 0, ±1 (m = 2) and 0, ±1, ±2 (m = 4), plus ∞.
_TRANSFORMS = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


def tile_for(h: int, w: int) -> int:
    """Output tile size: 4 (4× fewer multiplications), or 2 on maps of at most 2×2 pixels, where a
    4×4 tile would mostly multiply padding."""
    return 2 if max(h, w) <= 2 else 4


def transposed_flip(kernel):
    """The kernel whose SAME stride-1 convolution of dy is the input gradient (odd kernels)."""
    return tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])


def _kronecker_transforms(tile: int) -> dict[str, tf.Tensor]:
    """The 2-D transforms as matrices acting on row-major flattened tiles."""
    bt, g, at = (np.asarray(m, np.float64) for m in _TRANSFORMS[tile])
    kron = lambda m: tf.constant(np.kron(m, m), tf.float32)  # noqa: E731
    return {"input": kron(bt), "kernel": kron(g), "output": kron(at),
            "output_grad": kron(at.T), "kernel_grad": kron(g.T)}


def _transform(matrix, t):
    """matrix @ t, with t's leading axes flattened to matrix's columns."""
    return tf.matmul(matrix, tf.reshape(t, [matrix.shape[1], -1]))


def _windows(t, axis: int, tile: int):
    """Split a padded axis of length n·tile + 2 into n windows of tile + 2, overlapping by 2."""
    shape = [-1 if s is None else s for s in t.shape.as_list()]
    n = (shape[axis] - 2) // tile
    at = lambda s: (slice(None),) * axis + (s,)  # noqa: E731
    split = lambda u: tf.reshape(u, shape[:axis] + [n, tile] + shape[axis + 1:])  # noqa: E731
    body = split(t[at(slice(0, n * tile))])
    pad = [[0, 0]] * len(shape)
    pad[axis] = [0, tile - 2]
    overlap = split(tf.pad(t[at(slice(tile, None))], pad))[at(slice(None)) + (slice(0, 2),)]
    return tf.concat([body, overlap], axis=axis + 1)


def _tile_grid(h: int, w: int, tile: int) -> tuple[int, int]:
    return -(-h // tile), -(-w // tile)


def _input_tiles(x, tile: int):
    """[N, H, W, C] -> [α, α, N, tiles_h, tiles_w, C], SAME-padded."""
    h, w = x.shape[1], x.shape[2]
    th, tw = _tile_grid(h, w, tile)
    padded = tf.pad(x, [[0, 0], [1, th * tile + 1 - h], [1, tw * tile + 1 - w], [0, 0]])
    if th == tw == 1:
        return tf.transpose(padded, [1, 2, 0, 3])
    return tf.transpose(_windows(_windows(padded, 1, tile), 3, tile), [2, 4, 0, 1, 3, 5])


def _forward(x, kernel, tile: int, transforms):
    """The convolution, and the transformed input tiles V (kept for the kernel gradient)."""
    h, w, c_in = x.shape[1], x.shape[2], x.shape[3]
    c_out, positions = kernel.shape[3], (tile + 2) ** 2
    th, tw = _tile_grid(h, w, tile)
    v = tf.reshape(_transform(transforms["input"], _input_tiles(x, tile)), [positions, -1, c_in])
    u = tf.reshape(_transform(transforms["kernel"], kernel), [positions, c_in, c_out])
    y = tf.reshape(_transform(transforms["output"], tf.matmul(v, u)), [tile, tile, -1, th, tw, c_out])
    y = tf.reshape(tf.transpose(y, [2, 3, 0, 4, 1, 5]), [-1, th * tile, tw * tile, c_out])
    return y[:, :h, :w, :], v


def conv3x3(x, kernel, tile: int = 4):
    """SAME, stride-1 convolution of float32 x [N, H, W, C] (static H, W) with a 3×3 kernel."""
    transforms = _kronecker_transforms(tile)

    @tf.custom_gradient
    def convolve(x, kernel):
        y, v = _forward(x, kernel, tile, transforms)

        def grad(dy):
            h, w, c_out = dy.shape[1], dy.shape[2], dy.shape[3]
            th, tw = _tile_grid(h, w, tile)
            dx, _ = _forward(dy, transposed_flip(kernel), tile, transforms)
            dy = tf.pad(dy, [[0, 0], [0, th * tile - h], [0, tw * tile - w], [0, 0]])
            dy = tf.transpose(tf.reshape(dy, [-1, th, tile, tw, tile, c_out]), [2, 4, 0, 1, 3, 5])
            dm = tf.reshape(_transform(transforms["output_grad"], dy), [(tile + 2) ** 2, -1, c_out])
            du = tf.matmul(v, dm, transpose_a=True)
            return dx, tf.reshape(_transform(transforms["kernel_grad"], du), kernel.shape)

        return y, grad

    return convolve(x, kernel)
