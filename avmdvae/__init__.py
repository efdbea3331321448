"""avmdvae: audiovisual speech representation learning and manipulation with the VQ-MDVAE.

Implements Sadok, Leglaive, Girin, Alameda-Pineda and Seguier, "A multimodal dynamical variational
autoencoder for audiovisual speech representation learning" (Neural Networks, 2024).
"""

__version__ = "0.1.0"
