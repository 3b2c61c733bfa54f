import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from rnnlib.analysis import lessons
from rnnlib.viz import diagrams
from ui import scope


def train_link(task_name: str) -> None:
    label = f"Train on **{task_name}**"
    try:
        st.page_link(scope.page("train"), label=label, icon=":material/model_training:")
    except StreamlitPageNotFoundError:  # this page run on its own, without the app's navigation (AppTest)
        st.markdown(f":material/model_training: [{label}](train)")


st.title("Sequence forms")
st.markdown(
    "The same recurrent step serves four ways of mapping inputs to outputs (Karpathy, *The unreasonable "
    "effectiveness of recurrent neural networks*, 2015): what changes is where inputs enter and which states "
    "are read out and scored. Red boxes are inputs, green the RNN step (one cell, shared weights), blue outputs."
)

tasks_by_form = lessons.tasks_by_form()
for form, info in lessons.IO_FORM_INFO.items():
    st.subheader(info.title)
    picture, text = st.columns([3, 2], vertical_alignment="center")
    picture.plotly_chart(diagrams.io_form_figure(form), width="stretch", key=f"forms_{form}")
    with text:
        st.markdown(info.description)
        st.markdown("**Used for** " + "; ".join(info.examples) + ".")
        names = tasks_by_form[form]
        if names:
            st.markdown("Bundled tasks of this form:")
            for name in names:
                train_link(name)
        else:
            st.caption(f"No bundled task yet: none of this lab's tasks has the {form} form, so it cannot be "
                       "trained here for now.")
