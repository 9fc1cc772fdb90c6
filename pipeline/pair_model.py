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

        def __init__(self, similarity_scale: float = 20.0, **kwargs) -> None:
            super().__init__(**kwargs)
            self.similarity_scale = similarity_scale

    class PairSimilarityBertForSequenceClassification(BertPreTrainedModel):
        config_class = PairSimilarityBertConfig

        def __init__(self, config) -> None:
            super().__init__(config)
            self.num_labels = config.num_labels
            self.bert = BertModel(config, add_pooling_layer=False)
            self.dropout = nn.Dropout(config.hidden_dropout_prob)
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
            self.scale = nn.Parameter(torch.tensor(float(config.similarity_scale)))
            self.post_init()
            with torch.no_grad():  # start as the similarity alone; the classifier learns what it adds
                self.classifier.weight.zero_()
                self.classifier.bias.zero_()

        def get_input_embeddings(self):
            return self.bert.embeddings.word_embeddings

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            is_sep = (input_ids == self.config.eos_token_id).to(torch.int64)
            segment = torch.cumsum(is_sep, dim=1)  # 0: <s> + query, 1-2: separators, 2: passage
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            valid = attention_mask.to(torch.bool)
            query = ((segment == 0) & (positions > 0) & valid).unsqueeze(-1).to(hidden.dtype)
            passage = ((segment == 2) & (is_sep == 0) & valid).unsqueeze(-1).to(hidden.dtype)
            every = valid.unsqueeze(-1).to(hidden.dtype)
            q = (hidden * query).sum(1) / query.sum(1).clamp(min=1.0)
            p = (hidden * passage).sum(1) / passage.sum(1).clamp(min=1.0)
            pooled = (hidden * every).sum(1) / every.sum(1).clamp(min=1.0)
            similarity = nn.functional.cosine_similarity(q, p, dim=-1, eps=1e-6).unsqueeze(-1)
            logits = self.scale * similarity + self.classifier(self.dropout(pooled))
            loss = None
            if labels is not None:
                loss = nn.functional.binary_cross_entropy_with_logits(logits.view(-1), labels.view(-1).to(logits.dtype))
            return SequenceClassifierOutput(loss=loss, logits=logits)

    try:
        AutoConfig.register(MODEL_TYPE, PairSimilarityBertConfig, exist_ok=True)
        AutoModelForSequenceClassification.register(PairSimilarityBertConfig,
                                                    PairSimilarityBertForSequenceClassification, exist_ok=True)
    except TypeError:  # a transformers without exist_ok
        AutoConfig.register(MODEL_TYPE, PairSimilarityBertConfig)
        AutoModelForSequenceClassification.register(PairSimilarityBertConfig,
                                                    PairSimilarityBertForSequenceClassification)
    return PairSimilarityBertConfig, PairSimilarityBertForSequenceClassification
