"""TensorFlow Serving warm-up requests, written into the SavedModel.

TensorFlow Serving replays `assets.extra/tf_serving_warmup_requests` (a
TFRecord file of PredictionLog protos) when it loads a version, so the first
real request does not pay for graph initialisation.
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from mmrec_tf.pipelines import schema

FILENAME = "tf_serving_warmup_requests"


def _request(signature: str, inputs: dict) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=signature))
    for name, values in inputs.items():
        dtype = tf.int32 if all(isinstance(v, int) for v in values) else tf.string
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=dtype))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )


def write(
    saved_model_dir: str, *, user_ids: list, item_ids: list, history_behavior: str = ""
) -> str:
    """Writes warm-up requests for every signature with real ids.

    Args:
      saved_model_dir: the version folder being written.
      user_ids: a few known raw user ids.
      item_ids: as many known raw item ids.
      history_behavior: a behavior name for a `recommend_from_history`
        request (each user with one item's event); empty: the export has no
        such signature.

    Returns:
      The path of the warm-up file.
    """
    folder = os.path.join(saved_model_dir, "assets.extra")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FILENAME)
    users = [str(u) for u in user_ids]
    items = [str(i) for i in item_ids]
    with tf.io.TFRecordWriter(path) as writer:
        logs = [
            _request(schema.SERVING_DEFAULT, {schema.USER_ID: users, schema.ITEM_ID: items}),
            _request(schema.RECOMMEND, {schema.USER_ID: users}),
            _request(schema.RETRIEVE, {schema.USER_ID: users}),
        ]
        if history_behavior:
            history = {
                schema.USER_ID: users,
                schema.HISTORY_ITEM_ID: items,
                schema.HISTORY_BEHAVIOR: [history_behavior] * len(items),
                schema.HISTORY_ROW: list(range(len(items))),
            }
            logs.append(_request(schema.RECOMMEND_FROM_HISTORY, history))
        for log in logs:
            writer.write(log.SerializeToString())
    return path
