"""Arbitrary style transfer building blocks (SaBN's NST experiment: AdaIN vs SaAdaIN, compared
by style and content loss on training and validation images; docs/recipes.md#sabn-style-transfer).

- `models`: AdaIN's frozen VGG-19 encoder (to relu4_1), its mirrored decoder, and the network
  with the style layer from the variant registry (`adain`, `saadain`) between them.
- `losses`: AdaIN's content and style losses, per sample.
- `weights`: the encoder's weights from a given file or torch's hub cache (never downloaded).
- `data`: content and style images from two flat folders, served as (content, style) batches.
- `synthetic`: generated folders (digits as content, textures as style) for runs here.
"""
