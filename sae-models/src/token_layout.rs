//! How an image's tokens lie in a prompt: how many there are, and which of them form a grid
//! over the image (for drawing what a latent does on each image region).

/// How one image's tokens lie in a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTokenLayout {
    /// The image's tokens (its placeholder expanded).
    pub tokens: usize,
    /// Which of them form a grid over the image, if any do.
    pub grid: Option<TokenGrid>,
}

/// Tokens of an image that form a grid over the whole image, row by row: `rows x cols` tokens
/// starting `offset` tokens into the image's tokens, each row `stride` tokens after the one
/// above (more than `cols` where a row ends in tokens that are no region, as LLaVA-OneVision's
/// `image_newline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    /// Tokens of the image before the grid.
    pub offset: usize,
    /// Token rows, top to bottom.
    pub rows: usize,
    /// Tokens per row, left to right.
    pub cols: usize,
    /// Tokens from one row's start to the next's.
    pub stride: usize,
}
