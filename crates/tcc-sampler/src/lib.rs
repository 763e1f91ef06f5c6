//! Diffusion samplers and classifier-free guidance.
