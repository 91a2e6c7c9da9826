pub mod receivers;
