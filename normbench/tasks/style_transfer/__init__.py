"""Arbitrary style transfer (SaBN's NST experiment: AdaIN vs SaAdaIN, compared by style and
content loss on training and validation images; docs/recipes.md#sabn-style-transfer).

`task.StyleTransfer` is the registered task `style_transfer`. Its parts live in the layers
below: the network and its losses in `normbench.models` (`adain`: the backbone `adain_vgg19`,
`vgg_encoder`: the frozen encoder and its weights, `style_losses`), the (content, style)
batches in `normbench.data` (`style_folders`: the user's folders, `style_synthetic`: generated
ones), the layers `adain` and `saadain` in `normbench.variants`.
"""
