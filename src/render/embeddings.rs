//! The `/v1/embeddings` answer: vectors in, OpenAI's list out, each vector as float
//! numbers or, for `encoding_format: base64`, the base64 of its little-endian float32
//! bytes (what the official SDKs request and decode with `numpy.frombuffer(..., "float32")`).

use base64::Engine as _;

use crate::openai::embeddings::{
    EmbeddingData, EmbeddingResponse, EmbeddingUsage, EmbeddingVector,
};

/// Little-endian float32 bytes of `vector`, base64-encoded.
pub fn to_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The answer for `vectors` (in input order) from `model`.
pub fn render(
    model: &str,
    vectors: Vec<Vec<f32>>,
    prompt_tokens: usize,
    base64: bool,
) -> EmbeddingResponse {
    EmbeddingResponse {
        object: "list".into(),
        data: vectors
            .into_iter()
            .enumerate()
            .map(|(index, vector)| EmbeddingData {
                object: "embedding".into(),
                index,
                embedding: if base64 {
                    EmbeddingVector::Base64(to_base64(&vector))
                } else {
                    EmbeddingVector::Float(vector)
                },
            })
            .collect(),
        model: model.to_string(),
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_base64(text: &str) -> Vec<f32> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn float_answer_has_openai_shape() {
        let answer = render("m", vec![vec![0.5, -0.25], vec![1.0, 0.0]], 7, false);
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
                    {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}
                ],
                "model": "m",
                "usage": {"prompt_tokens": 7, "total_tokens": 7}
            })
        );
    }

    #[test]
    fn base64_round_trips_exactly() {
        let vector = vec![0.1f32, -3.5e-8, f32::MIN_POSITIVE, 123456.78, -0.0];
        let answer = render("m", vec![vector.clone()], 1, true);
        let EmbeddingVector::Base64(text) = &answer.data[0].embedding else {
            panic!("not base64")
        };
        let back = from_base64(text);
        assert_eq!(back.len(), vector.len());
        for (a, b) in back.iter().zip(&vector) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        // OpenAI's own example: [1.0] is "AACAPw==".
        assert_eq!(to_base64(&[1.0]), "AACAPw==");
    }
}
