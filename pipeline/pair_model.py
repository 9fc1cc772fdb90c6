"""A cross-encoder head that starts out knowing something: the similarity of the pair's two halves.

``PairSimilarityBertForSequenceClassification`` (``model_type: bert-pair-similarity``) reads the
query and the passage together, as any cross-encoder does (``<s> query </s></s> passage </s>``, full
attention across both), and scores the pair as

    logit = scale * cos(mean(query tokens), mean(passage tokens)) + classifier(mean(all tokens)) + bias

The usual head, a classifier on the first token, starts from nothing when the encoder was trained for
mean-pooled embeddings: in multilingual-e5-small the first token's output is nearly the same for every
input (its spread across pairs is 0.3% of its norm, against 29% for the mean), so a listwise loss
sat at ln(group size) for 100 steps in this project's first attempts. The similarity term gives
training a signal from step one and stays trainable. It needs the separator token's id
(``config.eos_token_id``) to tell the halves apart; everything else is a plain ``BertModel``.

**Reading the halves apart first** (``config.split_layers = S``, e.g. 10 of 12): the first S layers
read the query and the passage each on its own (attention within a half, positions restarting at
each half), the last layers read them together. With ``S`` equal to the layer count the score is
exactly the bi-encoder's cosine (e5's ``query: ``/``passage: `` layout, mean pooling), so training
starts from the bi-encoder's ranking and the joint layers learn what reading the two together adds
(the late-interaction cross-encoders of PreTTR and DeFormer). The tokenizer's pair template is then
``<s> query: $A </s> <s> passage: $B </s>``; the second ``<s>`` (``config.bos_token_id``) starts the
passage.

The classes are defined on first use (:func:`register`), so importing this module costs nothing;
:func:`register` also tells transformers' Auto classes about them, which
``CrossEncoder(folder)`` needs before it loads such a folder.
"""

from __future__ import annotations

from functools import cache

MODEL_TYPE = "bert-pair-similarity"


@cache
def register():
    """Define the config and model classes and register them with transformers' Auto classes; return both."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertModel, BertPreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class PairSimilarityBertConfig(BertConfig):
        model_type = MODEL_TYPE

        def __init__(self, similarity_scale: float = 20.0, split_layers: int = 0, **kwargs) -> None:
            super().__init__(**kwargs)
            self.similarity_scale = similarity_scale
            self.split_layers = split_layers  # lower layers that read each half on its own (0: none)

    class PairSimilarityBertForSequenceClassification(BertPreTrainedModel):
        config_class = PairSimilarityBertConfig

        def __init__(self, config) -> None:
            super().__init__(config)
            self.num_labels = config.num_labels
            self.bert = BertModel(config, add_pooling_layer=False)
            self.dropout = nn.Dropout(config.hidden_dropout_prob)
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
            self.scale = nn.Parameter(torch.tensor(float(config.similarity_scale)))
            split = getattr(config, "split_layers", 0)
            if split:  # the upper layers again, reading both halves together, and what they add to the score
                from transformers.models.bert.modeling_bert import BertLayer

                self.joint = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers - split))
                self.cross = nn.Linear(2 * config.hidden_size, config.num_labels)
            self.post_init()
            with torch.no_grad():  # start as the similarity alone; the classifier learns what it adds
                for head in (self.classifier, getattr(self, "cross", None)):
                    if head is not None:
                        head.weight.zero_()
                        head.bias.zero_()

        def get_input_embeddings(self):
            return self.bert.embeddings.word_embeddings

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            valid = attention_mask.to(torch.bool)
            if getattr(self.config, "split_layers", 0):
                logits = self._split_logits(input_ids, valid)
            else:
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids).last_hidden_state
                is_sep = (input_ids == self.config.eos_token_id).to(torch.int64)
                segment = torch.cumsum(is_sep, dim=1)  # 0: <s> + query, 1-2: separators, 2: passage
                positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
                q = _mean(hidden, (segment == 0) & (positions > 0) & valid)
                p = _mean(hidden, (segment == 2) & (is_sep == 0) & valid)
                similarity = _cosine(q, p)
                logits = self.scale * similarity + self.classifier(self.dropout(_mean(hidden, valid)))
            loss = None
            if labels is not None:
                loss = nn.functional.binary_cross_entropy_with_logits(logits.view(-1), labels.view(-1).to(logits.dtype))
            return SequenceClassifierOutput(loss=loss, logits=logits)

        def _split_logits(self, input_ids, valid):
            """Lower layers read each half alone; the upper ones read them apart (the bi-encoder's cosine)
            and, in ``self.joint``, together (what reading them together adds).

            Static shapes only (masks and position ids come from cumulative sums), so the model traces
            for export like any BERT. The reading apart runs without gradients while its weights are
            frozen, as they are in training (they are the bi-encoder's own).
            """
            is_bos = (input_ids == self.config.bos_token_id).to(torch.int64)
            second = (torch.cumsum(is_bos, dim=1) >= 2) & valid  # the passage: from the second <s> on
            query = valid & ~second
            width = input_ids.shape[1]
            positions = torch.arange(width, device=input_ids.device).unsqueeze(0)
            query_length = query.to(torch.int64).sum(1, keepdim=True)
            position_ids = torch.where(second, positions - query_length, positions)
            apart = (second.unsqueeze(2) == second.unsqueeze(1)) & valid.unsqueeze(1)
            hidden, alone = self.read_apart(input_ids, position_ids, apart)
            similarity = _cosine(_mean(alone, query), _mean(alone, second))
            return self.score_together(hidden, valid, query, second, similarity)

        def read_apart(self, input_ids, position_ids, apart):
            """The states after the lower ``split_layers`` layers and after all of them, reading within
            ``apart`` (a ``[batch, width, width]`` mask of the tokens each token may attend to).

            A half read on its own (positions from 0) gives the same states as in a pair, which is
            what lets training cache them once per text (:mod:`training.cached`).
            """
            frozen = not any(p.requires_grad for p in self.bert.parameters())
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                hidden = self.bert.embeddings(input_ids=input_ids, position_ids=position_ids,
                                              token_type_ids=torch.zeros_like(input_ids))
                low = torch.finfo(hidden.dtype).min
                apart_mask = torch.where(apart, 0.0, low).to(hidden.dtype).unsqueeze(1)
                split = self.config.split_layers
                for layer in self.bert.encoder.layer[:split]:
                    hidden = _run(layer, hidden, apart_mask)
                alone = hidden
                for layer in self.bert.encoder.layer[split:]:
                    alone = _run(layer, alone, apart_mask)
            return hidden, alone

        def score_together(self, hidden, valid, query, second, similarity):
            """The logit: ``scale x similarity`` plus what the joint layers, reading ``hidden`` (the
            lower layers' states of both halves) together, add through the head."""
            low = torch.finfo(hidden.dtype).min
            width = hidden.shape[1]
            together_mask = torch.where(valid.unsqueeze(1), 0.0, low).to(hidden.dtype).unsqueeze(1)
            together_mask = together_mask.expand(-1, -1, width, -1)
            for layer in self.joint:
                hidden = _run(layer, hidden, together_mask)
            q, p = _mean(hidden, query), _mean(hidden, second)
            pooled = self.dropout(_mean(hidden, valid))
            interaction = self.dropout(torch.cat([q * p, (q - p).abs()], dim=-1))
            return self.scale * similarity + self.classifier(pooled) + self.cross(interaction)

    def _run(layer, hidden, mask):
        out = layer(hidden, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out

    def _cosine(a, b):  # written out: OpenVINO converts these ops, not aten::cosine_similarity
        norms = (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)
        return ((a * b).sum(-1) / norms).unsqueeze(-1)

    def _mean(hidden, mask):
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    try:
        AutoConfig.register(MODEL_TYPE, PairSimilarityBertConfig, exist_ok=True)
        AutoModelForSequenceClassification.register(PairSimilarityBertConfig,
                                                    PairSimilarityBertForSequenceClassification, exist_ok=True)
    except TypeError:  # a transformers without exist_ok
        AutoConfig.register(MODEL_TYPE, PairSimilarityBertConfig)
        AutoModelForSequenceClassification.register(PairSimilarityBertConfig,
                                                    PairSimilarityBertForSequenceClassification)
    return PairSimilarityBertConfig, PairSimilarityBertForSequenceClassification
